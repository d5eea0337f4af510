#!/usr/bin/env bash
# The quality side of the owner-side cost study (owner_cost.sh is the cost side): an α=0.5
# emulator made from STEPS steps of ScaleOT's importance run (harmonizers + RL, with the given
# `scaleot importance` options) or of Offsite-Tuning's distillation (uniform LayerDrop, then
# distilled), judged two ways:
# - ARC-Easy Emulator ZS (570 documents, acc; standard error ~2 points), and
# - its LM loss on held-out text: ARC-Easy's train questions with their correct answers (32k
#   tokens in 512-token windows), text neither run trained on — a far less noisy measure of
#   how closely the emulator stands in for the model.
# It also prints the run's own wall time and peak memory.
# Usage: tools/bench/emulator_quality.sh NAME STEPS scaleot|distill [options...]
#   e.g. tools/bench/emulator_quality.sh rl4-s1 100 scaleot --rl-every 4 --eta 4 --seed 1
#        tools/bench/emulator_quality.sh ot-s1 100 distill --seed 1
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 3 ]; then
  sed -n 2,14p "$0" >&2
  exit 2
fi
name=$1 steps=$2 method=$3
shift 3
bash scripts/fetch-assets.sh >/dev/null
cargo build --release -q -p scaleot-owner
bin=target/release/scaleot
root=target/bench-emulator-quality
out=$root/$name
mkdir -p "$out"
text=$root/arc-easy-train.txt
if [ ! -s "$text" ]; then
  $bin task-data --task arc_easy --out "$root/arc-easy-train.jsonl" >/dev/null
  python3 - "$root/arc-easy-train.jsonl" "$text" <<'PY'
import json, sys
with open(sys.argv[2], "w") as f:
    for line in open(sys.argv[1]):
        d = json.loads(line)
        f.write(f"{d['query']} {d['choices'][d['gold']]}\n\n")
PY
fi
case $method in
  scaleot)
    $bin importance --steps "$steps" --checkpoint-every 0 "$@" --out "$out/importance.json" \
      >"$out/importance.log" 2>&1
    $bin emulator --method scaleot --alpha 0.5 --importance "$out/importance.json" \
      --out "$out/emulator.json" >"$out/emulator.log" 2>&1
    ;;
  distill)
    $bin emulator --method uniform-drop --alpha 0.5 --distill --distill-steps "$steps" "$@" \
      --out "$out/emulator.json" >"$out/emulator.log" 2>&1
    ;;
  *)
    echo "METHOD is scaleot or distill, not $method" >&2
    exit 2
    ;;
esac
$bin eval --tasks arc_easy --emulator "$out/emulator.json" --json >"$out/zs.json" 2>"$out/eval.log"
$bin perplexity "$text" --emulator "$out/emulator.json" --max-tokens 32768 --window 512 \
  --stride 512 --json >"$out/heldout.json" 2>"$out/heldout.log"
python3 - "$out" "$method" "$steps" "$*" <<'PY'
import json, sys
out, method, steps, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if method == "scaleot":
    run = json.load(open(f"{out}/importance.json"))
else:
    run = json.load(open(f"{out}/emulator.json"))["params"]["distill"]
zs = json.load(open(f"{out}/zs.json"))[0]
held = json.load(open(f"{out}/heldout.json"))
print(f"{out}: {method} {steps} steps {extra}")
print(f"  owner run {run['seconds']:.0f} s ({run['seconds'] / steps:.2f} s/step), peak {run['peak_rss_mib']:.0f} MiB")
print(f"  ARC-Easy Emulator ZS {100 * zs['acc']['value']:.1f} ± {100 * zs['acc']['stderr']:.1f}")
print(f"  held-out LM loss {held['nll_per_token']:.3f} nats/token ({held['tokens']} tokens)")
PY
