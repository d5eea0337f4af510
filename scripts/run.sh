#!/usr/bin/env bash
# The main job on a fresh machine: fetch the real model, evaluation data and the owner's public
# corpus, build the owner binary, then run the offsite-tuning protocol on SmolLM2-135M:
#   ScaleOT importance (harmonizers + RL scores) → emulators (uniform LayerDrop, ScaleOT) →
#   for each task: Full ZS, Full FT, Emulator ZS, Emulator FT (adapters tuned on the emulator),
#   Plug-in (those adapters in the full model) → OUT/report/report.md, report.json, SVG plot;
#   then builds the data owner's page (dist/) and, with SERVE=1, serves it with the ScaleOT
#   emulator on http://127.0.0.1:8080/ (`scaleot serve`).
# Every stage is resumable: run it again after an interruption and finished work is kept.
# Settings via environment: TASKS (arc_easy), METHODS (uniform-drop,scaleot; NAME@A runs a method
# at alpha A only), ALPHAS (0.5; shares of middle layers emulated), BETAS (1; SRC strengths for
# ScaleOT), SRC_RULES (share; how SRC picks ranks, RULE@A at one alpha), FULL_FT (adapters; `all`
# adds every layer tuned), LIMIT (all; evaluation documents per task), STEPS (150), LR (5e-4),
# LORA_RANK (8; 0 tunes whole adapter layers), IMPORTANCE_STEPS (100), IMPORTANCE_OPTS (more
# `scaleot importance` options), OUT (target/run).
# The size sweep of results/smollm2-135m/ (its cells took 13.3 hours of this 2-core machine;
# cached cell by cell, so it can run over several sittings; SciQ left out, see sweep/README.md):
#   TASKS=arc_easy,piqa,openbookqa ALPHAS=0.5,0.75,0.25 BETAS=1,0.5 FULL_FT=adapters,all \
#     METHODS=uniform-drop,dynamic-drop,scaleot,uniform-drop-distill@0.5 STEPS=100 OUT=target/sweep \
#     SRC_RULES=share,energy@0.5,importance@0.5,least@0.5 bash scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TASKS=${TASKS:-arc_easy} METHODS=${METHODS:-uniform-drop,scaleot} STEPS=${STEPS:-150}
LR=${LR:-5e-4} LORA_RANK=${LORA_RANK:-8} IMPORTANCE_STEPS=${IMPORTANCE_STEPS:-100} OUT=${OUT:-target/run}
BETAS=${BETAS:-1} SRC_RULES=${SRC_RULES:-share} ALPHAS=${ALPHAS:-0.5} FULL_FT=${FULL_FT:-adapters} limit=(); [ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
read -r -a importance_opts <<<"${IMPORTANCE_OPTS:-}"
bash scripts/setup.sh
bash scripts/setup-web.sh
bash scripts/fetch-assets.sh
cargo build --release -p scaleot-owner
bin=target/release/scaleot
mkdir -p "$OUT"
"$bin" generate "The capital of France is" --max-tokens 12
if [ ! -f "$OUT/importance.json" ]; then
  resume=()
  [ -f "$OUT/importance.ckpt" ] && resume=(--resume "$OUT/importance.ckpt")
  "$bin" importance --steps "$IMPORTANCE_STEPS" "${importance_opts[@]}" "${resume[@]}" \
    --out "$OUT/importance.json"
fi
"$bin" report --tasks "$TASKS" --methods "$METHODS" --importance "$OUT/importance.json" \
  --alphas "$ALPHAS" --betas "$BETAS" --src-rules "$SRC_RULES" --full-ft "$FULL_FT" "${limit[@]}" --steps "$STEPS" --lr "$LR" --lora-rank "$LORA_RANK" --out "$OUT/report"
cat "$OUT/report/report.md"
echo "==> the data owner's page (dist/)"
PATH="$PWD/tools/web/node_modules/.bin:$PATH" trunk build --release --offline
emu=$(ls "$OUT"/report/emulators/scaleot-a0.5-b1-*.json 2>/dev/null | head -1)
[ -n "$emu" ] || emu=$(ls "$OUT"/report/emulators/*.json | grep -v full | head -1)
if [ "${SERVE:-0}" = 1 ]; then
  "$bin" serve --emulator "$emu"
else
  echo "hand it out: $bin serve --emulator $emu   (or SERVE=1 bash scripts/run.sh)"
fi
