#!/usr/bin/env bash
# Forward-pass benchmark of SmolLM2-135M at batch x length on CPU: scaleot (burn flex) and
# PyTorch side by side in one run, same weights, tokens and thread count; prints the ratio.
# Usage: tools/bench/forward.sh [--batch 4] [--len 128] [--iters 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/fetch-assets.sh >/dev/null
bash tools/reference/setup-venv.sh >/dev/null
cargo build --release -q -p scaleot-owner
THREADS=$(nproc)
ours=$(target/release/scaleot bench "$@")
peer=$(.venv-ref/bin/python tools/bench/forward_peer.py --model-dir assets/model --threads "$THREADS" "$@" 2>/dev/null | tail -1)
python3 - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"forward, batch {o['batch']} x {o['len']} tokens, {o['threads']} threads, {o['iters']} iters")
print(f"{'impl':34} {'tokens/s':>10} {'s/forward':>10} {'peak RSS MiB':>13}")
for r in (o, p):
    print(f"{r['impl']:34} {r['tokens_per_second']:10.1f} {r['seconds_per_forward']:10.3f} {r['peak_rss_mib']:13.0f}")
print(f"ratio scaleot/pytorch: speed {o['tokens_per_second'] / p['tokens_per_second']:.2f}x, "
      f"peak memory {o['peak_rss_mib'] / p['peak_rss_mib']:.2f}x")
PY
