#!/usr/bin/env bash
# Adapter training step on the uniform-drop emulator (2+2 adapters, half the middle layers):
# scaleot (burn flex) and PyTorch side by side, same emulator, batch, tokens and threads.
# Usage: tools/bench/train_step.sh [--batch 8] [--len 128] [--iters 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/fetch-assets.sh >/dev/null
bash tools/reference/setup-venv.sh >/dev/null
cargo build --release -q -p scaleot-owner
emu=target/bench-emulator.json
[ -f "$emu" ] || target/release/scaleot emulator --adapters 2+2 --frozen-dtype f32 --out "$emu" >/dev/null
THREADS=$(nproc)
ours=$(target/release/scaleot bench-train --emulator "$emu" "$@")
peer=$(.venv-ref/bin/python tools/bench/train_step_peer.py --model-dir assets/model --emulator "$emu" --threads "$THREADS" "$@" 2>/dev/null | tail -1)
python3 - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"adapter training step, batch {o['batch']} x {o['len']} tokens, {o['threads']} threads, {o['iters']} iters")
print(f"{'impl':34} {'tokens/s':>10} {'s/step':>10} {'peak RSS MiB':>13}")
for r in (o, p):
    print(f"{r['impl']:34} {r['tokens_per_second']:10.1f} {r['seconds_per_step']:10.3f} {r['peak_rss_mib']:13.0f}")
print(f"ratio scaleot/pytorch: speed {o['tokens_per_second'] / p['tokens_per_second']:.2f}x, "
      f"peak memory {o['peak_rss_mib'] / p['peak_rss_mib']:.2f}x")
PY
