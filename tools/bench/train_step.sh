#!/usr/bin/env bash
# scaleot against PyTorch on the same CPU, side by side in one run, same weights, tokens,
# batch and threads, each row in its own process (so peak RSS is the row's own):
#   forward          the full SmolLM2-135M forward pass (PyTorch: transformers, inference mode)
#   whole layers     an adapter training step on the uniform-drop emulator (2+2 adapters, half
#                    the middle layers): forward, backward, AdamW on the whole adapter layers
#   LoRA             the same step with LoRA r=8 (alpha 16) on every projection of the adapter
#                    layers, as the page trains (PyTorch: PEFT with the same targets and layers)
# Usage: [THREADS=N] tools/bench/train_step.sh [--batch 8] [--len 128] [--iters 5] [--lora-rank 8] [--pairs 1]
#   --pairs N runs every row N times, scaleot and PyTorch alternating, and prints each pair's
#   ratio and their median: on a shared machine whose speed drifts, one pair decides little.
set -euo pipefail
cd "$(dirname "$0")/../.."
batch=8 len=128 iters=5 rank=8 pairs=1
while (($#)); do
  case $1 in
    --batch) batch=$2 ;; --len) len=$2 ;; --iters) iters=$2 ;; --lora-rank) rank=$2 ;; --pairs) pairs=$2 ;;
    *) echo "unknown option $1 (--batch, --len, --iters, --lora-rank, --pairs)" >&2; exit 2 ;;
  esac
  shift 2
done
cores=$(nproc)
THREADS=${THREADS:-$cores}
if ! [[ $THREADS =~ ^[1-9][0-9]*$ ]] || ((THREADS > cores)); then
  echo "THREADS=$THREADS: must be between 1 and this machine's $cores cores (more threads than cores only measure contention)" >&2
  exit 2
fi
# Both sides hold [batch, len, vocab] logits and their gradient at some point (PyTorch does;
# we chunk them), plus each kept layer's activations: refuse a batch that cannot fit.
need_mib=$(( batch * len * (3 * 49152 + 24 * (16 * 576 + 6 * 1536 + 2 * 9 * len)) * 4 / 1048576 + 2048 ))
avail_mib=$(( $(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo) / 1024 ))
if ((need_mib > avail_mib)); then
  echo "batch $batch x $len needs about $need_mib MiB, but only $avail_mib MiB are free: use a smaller --batch or --len" >&2
  exit 2
fi
bash scripts/fetch-assets.sh >/dev/null
bash tools/reference/setup-venv.sh exports >/dev/null
cargo build --release -q -p scaleot-owner
emu=target/bench-emulator.json
[ -f "$emu" ] || target/release/scaleot emulator --adapters 2+2 --frozen-dtype f32 --out "$emu" >/dev/null
export RAYON_NUM_THREADS=$THREADS
py=(.venv-ref/bin/python)
shape=(--batch "$batch" --len "$len" --iters "$iters")
rows=()
for ((pair = 0; pair < pairs; pair++)); do
  rows+=("forward" "$(target/release/scaleot bench "${shape[@]}")"
    "$("${py[@]}" tools/bench/forward_peer.py --model-dir assets/model --threads "$THREADS" "${shape[@]}" 2>/dev/null | tail -1)")
  rows+=("whole layers" "$(target/release/scaleot bench-train --emulator "$emu" "${shape[@]}")"
    "$("${py[@]}" tools/bench/train_step_peer.py --model-dir assets/model --emulator "$emu" --threads "$THREADS" "${shape[@]}" 2>/dev/null | tail -1)")
  rows+=("LoRA r=$rank" "$(target/release/scaleot bench-train --emulator "$emu" --lora-rank "$rank" "${shape[@]}")"
    "$("${py[@]}" tools/bench/train_step_peer.py --model-dir assets/model --emulator "$emu" --threads "$THREADS" --lora-rank "$rank" "${shape[@]}" 2>/dev/null | tail -1)")
done
python3 - "$batch" "$len" "$iters" "$THREADS" "$pairs" "${rows[@]}" <<'PY'
import json, statistics, sys
batch, length, iters, threads, pairs, rest = *sys.argv[1:6], sys.argv[6:]
print(f"batch {batch} x {length} tokens, {threads} threads, {iters} timed iterations, same machine, {pairs} pair(s) per row")
print(f"{'row':14} {'impl':40} {'tokens/s':>9} {'s/iter':>8} {'peak RSS MiB':>13}")
ratios = {}
for i in range(0, len(rest), 3):
    name, ours, peer = rest[i], json.loads(rest[i + 1]), json.loads(rest[i + 2])
    for r in (ours, peer):
        secs = r.get("seconds_per_step", r.get("seconds_per_forward"))
        print(f"{name:14} {r['impl'][:40]:40} {r['tokens_per_second']:9.1f} {secs:8.3f} {r['peak_rss_mib']:13.0f}")
    ratios.setdefault(name, []).append(
        (ours["tokens_per_second"] / peer["tokens_per_second"], ours["peak_rss_mib"] / peer["peak_rss_mib"]))
print("ratios scaleot / pytorch (speed: higher is better; memory: lower is better)")
for name, pairs_ in ratios.items():
    speeds = ", ".join(f"{s:.2f}" for s, _ in pairs_)
    print(f"{name:14} speed {statistics.median(s for s, _ in pairs_):.2f}x (pairs: {speeds})   "
          f"peak memory {statistics.median(m for _, m in pairs_):.2f}x")
PY
