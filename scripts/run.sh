#!/usr/bin/env bash
# The main job on a fresh machine: fetch the real model and evaluation data, build the owner
# binary, then run offsite-tuning end to end on SmolLM2-135M and ARC-Easy:
#   full model zero-shot → uniform-drop emulator (2+2 adapters, half the middle layers) →
#   emulator zero-shot → fine-tune the adapters on ARC-Easy's train split → emulator FT →
#   plug the adapters into the full model → plug-in accuracy.
# Settings via environment: TASK (arc_easy), STEPS (150), LR (1e-4), OUT (target/run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TASK=${TASK:-arc_easy} STEPS=${STEPS:-150} LR=${LR:-1e-4} OUT=${OUT:-target/run}
bash scripts/setup.sh
bash scripts/fetch-assets.sh
cargo build --release -p scaleot-owner
bin=target/release/scaleot
mkdir -p "$OUT"
"$bin" generate "The capital of France is" --max-tokens 12
echo "== Full ZS";     "$bin" eval --tasks "$TASK"
"$bin" emulator --method uniform-drop --adapters 2+2 --out "$OUT/emulator.json"
echo "== Emulator ZS"; "$bin" eval --tasks "$TASK" --emulator "$OUT/emulator.json"
"$bin" task-data --task "$TASK" --out "$OUT/$TASK-train.jsonl"
"$bin" finetune --emulator "$OUT/emulator.json" --data "$OUT/$TASK-train.jsonl" \
  --steps "$STEPS" --batch-size 8 --lr "$LR" --warmup 15 --held-out 0.05 --out "$OUT/adapter.json"
echo "== Emulator FT"; "$bin" eval --tasks "$TASK" --emulator "$OUT/emulator.json" --adapter "$OUT/adapter.json"
"$bin" plugin --adapter "$OUT/adapter.json" --out "$OUT/plugged"
echo "== Plug-in";     "$bin" eval --tasks "$TASK" --model "$OUT/plugged"
