#!/usr/bin/env bash
# The model owner's cost of making an emulator, at the same number of steps, batch and sequence
# length: ScaleOT's Dynamic LayerReplace (`scaleot importance`: harmonizers + RL scores) against
# Offsite-Tuning's distillation (`scaleot emulator --method uniform-drop --distill`).
# Wall time of the steps and peak memory of each process, side by side, with the ratios.
# Usage: tools/bench/owner_cost.sh [STEPS] [extra `scaleot importance` arguments...]
#   e.g. tools/bench/owner_cost.sh 40 --score-on training --candidates 2 --antithetic
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-40}
shift || true
bash scripts/fetch-assets.sh >/dev/null
cargo build --release -q -p scaleot-owner
out=target/bench-owner-cost
mkdir -p "$out"
bin=target/release/scaleot
$bin emulator --method uniform-drop --alpha 0.5 --distill --distill-steps "$STEPS" \
  --distill-batch 4 --distill-seq-len 128 --out "$out/distilled.json" >"$out/distill.log" 2>&1
$bin importance --steps "$STEPS" --batch 4 --seq-len 128 --checkpoint-every 0 "$@" \
  --out "$out/importance.json" >"$out/importance.log" 2>&1
python3 - "$out" "$STEPS" "$*" <<'PY'
import json, sys
out, steps, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = json.load(open(f"{out}/distilled.json"))["params"]["distill"]
i = json.load(open(f"{out}/importance.json"))
c = i["config"]
print(f"owner-side cost, {steps} steps of 4 x 128 tokens, {out}; importance options: {extra or '(defaults)'}")
print(f"{'run':72} {'s/step':>8} {'total s':>8} {'peak RSS MiB':>13}")
rows = [
    (f"Offsite-Tuning distillation (13 layers; {d.get('lm_weight', 0)} x LM + {d.get('kd_weight', 1)} x KD)",
     d["seconds"], d["peak_rss_mib"]),
    (f"ScaleOT importance ({c.get('harmonizer_loss', 'lm')} loss, N_c={c['candidates']}{' antithetic' if c.get('antithetic') else ''}, "
     f"on {c.get('score_on', 'validation')}, rl-every {c.get('rl_every', 1)}, eta {c['eta']}, "
     f"loss-stride {c.get('loss_stride', 1)}"
     + (f", settled at step {i['settled_at'] + 1}" if i.get("settled_at") is not None else "") + ")",
     i["seconds"], i["peak_rss_mib"]),
]
for name, secs, rss in rows:
    print(f"{name:72} {secs / steps:8.2f} {secs:8.1f} {rss:13.0f}")
print(f"ratio ScaleOT/distillation: wall time {i['seconds'] / d['seconds']:.2f}x, "
      f"peak memory {i['peak_rss_mib'] / d['peak_rss_mib']:.2f}x")
PY
