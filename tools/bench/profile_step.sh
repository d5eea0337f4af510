#!/usr/bin/env bash
# Where one LoRA training step's time goes, scaleot against PyTorch + PEFT, in the same
# categories (tools/bench/profile_categories.py): scaleot's from `perf record` call stacks of
# `scaleot bench-train`, PyTorch's from torch.profiler of the same step (same emulator, batch,
# length, LoRA rank). One thread on both sides, so every sample keeps its callers; the speed
# ratios at the machine's thread count are tools/bench/train_step.sh's.
# Usage: tools/bench/profile_step.sh [--batch 8] [--len 128] [--lora-rank 8]
set -euo pipefail
cd "$(dirname "$0")/../.."
batch=8 len=128 rank=8
while (($#)); do
  case $1 in
    --batch) batch=$2 ;; --len) len=$2 ;; --lora-rank) rank=$2 ;;
    *) echo "unknown option $1 (--batch, --len, --lora-rank)" >&2; exit 2 ;;
  esac
  shift 2
done
command -v perf >/dev/null || { echo "perf is needed (Debian: linux-perf)" >&2; exit 2; }
bash scripts/fetch-assets.sh >/dev/null
bash tools/reference/setup-venv.sh exports >/dev/null
cargo build --release -q -p scaleot-owner
emu=target/bench-emulator.json
[ -f "$emu" ] || target/release/scaleot emulator --adapters 2+2 --frozen-dtype f32 --out "$emu" >/dev/null
out=target/profile-step
mkdir -p "$out"
hz=499 iters=2
RAYON_NUM_THREADS=1 perf record -q -F "$hz" --call-graph dwarf,32768 -o "$out/perf.data" -- \
  target/release/scaleot bench-train --emulator "$emu" --lora-rank "$rank" --batch "$batch" --len "$len" \
  --iters "$iters" >"$out/ours.json"
perf script -i "$out/perf.data" -F tid,ip,sym 2>/dev/null >"$out/perf.txt"
# bench-train runs one untimed step before the timed ones.
ours=$(python3 tools/bench/profile_categories.py "$out/perf.txt" "$hz" $((iters + 1)))
peer=$(.venv-ref/bin/python tools/bench/train_step_peer.py --model-dir assets/model --emulator "$emu" --threads 1 --lora-rank "$rank" --batch "$batch" --len "$len" --profile 2>/dev/null | tail -1)
python3 - "$batch" "$len" "$rank" "$(cat "$out/ours.json")" "$ours" "$peer" <<'PY'
import json, sys
sys.path.insert(0, "tools/bench")
from profile_categories import CATEGORIES
batch, length, rank = sys.argv[1:4]
run, ours, peer = (json.loads(x) for x in sys.argv[4:7])
print(f"one LoRA r={rank} step, batch {batch} x {length}, 1 thread: seconds per step by category")
print(f"{'category':52} {'scaleot':>9} {'PyTorch':>9}")
for c in CATEGORIES:
    print(f"{c:52} {ours['seconds'].get(c, 0):9.3f} {peer['seconds'].get(c, 0):9.3f}")
print(f"{'sum of the categories':52} {sum(ours['seconds'].values()):9.3f} {sum(peer['seconds'].values()):9.3f}")
print(f"{'step wall time (scaleot: bench-train, PyTorch: the profiled step)':52} "
      f"{run['seconds_per_step']:9.3f} {peer['wall_seconds']:9.3f}")
PY
