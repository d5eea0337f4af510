#!/usr/bin/env bash
# The owner's commands on a GPU (`--device gpu`, burn's wgpu backend) against the CPU, on the tiny
# test model: evaluation log-likelihoods, importance (harmonizer + RL steps), distillation and
# fine-tuning must run and agree with the CPU within float tolerance. Works on any Vulkan, Metal
# or DX12 adapter, including Mesa's software lavapipe (`apt-get install mesa-vulkan-drivers`).
# Usage: tools/gpu_check.sh [DEVICE]   (DEVICE: gpu (default) or cuda, built with that feature)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-gpu}
feature=wgpu; [ "$DEVICE" = cuda ] && feature=cuda
cargo build --release -q -p scaleot-owner --features "$feature"
cargo build --release -q --example tiny_model
out=target/gpu-check; rm -rf "$out"; mkdir -p "$out"
bin=target/release/scaleot
target/release/examples/tiny_model "$out/tiny"
printf 'the owner public text %s\n' $(seq 1 400) > "$out/corpus.txt"
for dev in cpu "$DEVICE"; do
  echo "==> $dev"
  "$bin" score --json --model "$out/tiny" --device "$dev" "The capital of France is" " Paris" \
    | tee "$out/score-$dev.json"
  "$bin" importance --model "$out/tiny" --device "$dev" --adapters 1+1 --corpus "$out/corpus.txt" \
    --steps 3 --batch 2 --val-batch 2 --seq-len 16 --rank 4 --group 2 --checkpoint-every 0 \
    --out "$out/imp-$dev.json"
  "$bin" emulator --model "$out/tiny" --adapters 1+1 --keep 2 --distill --distill-steps 3 \
    --distill-batch 2 --distill-seq-len 16 --corpus "$out/corpus.txt" --device "$dev" \
    --out "$out/emu-$dev.json"
  "$bin" finetune --emulator "$out/emu-cpu.json" --device "$dev" --data "$out/corpus.txt" \
    --steps 3 --batch-size 2 --seq-len 16 --lora-rank 4 --checkpoint-every 0 \
    --out "$out/adapter-$dev.json" 2>&1 | tee "$out/finetune-$dev.log"
done
python3 - "$out" "$DEVICE" <<'PY'
import json, re, sys
out, dev = sys.argv[1], sys.argv[2]
a, b = (json.load(open(f"{out}/score-{d}.json"))["loglikelihood"] for d in ("cpu", dev))
assert abs(a - b) < 1e-3, f"log-likelihood cpu {a} vs {dev} {b}"
ia, ib = (json.load(open(f"{out}/imp-{d}.json")) for d in ("cpu", dev))
ds = max(abs(x - y) for x, y in zip(ia["scores"], ib["scores"]))
dh = max(abs(x[0] - y[0]) for x, y in zip(ia["history"], ib["history"]))
assert ds < 1e-3 and dh < 1e-3, f"importance differs: scores {ds}, losses {dh}"
ea, eb = (json.load(open(f"{out}/emu-{d}.json"))["params"]["distill"] for d in ("cpu", dev))
assert abs(ea["relative_loss_last"] - eb["relative_loss_last"]) < 1e-3, (ea, eb)
held = lambda d: [float(x) for x in re.findall(r"held-out loss (\S+) → (\S+)", open(f"{out}/finetune-{d}.log").read())[0]]
fa, fb = held("cpu"), held(dev)
assert max(abs(x - y) for x, y in zip(fa, fb)) < 1e-3, f"fine-tuning held-out loss cpu {fa} vs {dev} {fb}"
print(f"{dev} agrees with cpu: log-likelihood {a:.4f} vs {b:.4f}, importance scores within {ds:.1e}, "
      f"harmonizer losses within {dh:.1e}, distillation loss {ea['relative_loss_last']:.4f} vs "
      f"{eb['relative_loss_last']:.4f}, fine-tuned held-out loss {fa[1]:.4f} vs {fb[1]:.4f}")
PY
