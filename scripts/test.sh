#!/usr/bin/env bash
# The test command: sets up what is missing, fetches the real model and data, then runs
# formatting, import and lint checks, all native tests, CLI smoke runs on the real model, the
# lm-evaluation-harness parity, the browser tests, and the export check (what plug-in writes,
# loaded by transformers, PEFT and gguf). Each stage's time is printed as it ends
# and all of them at the end (also in target/ci-stages.txt).
# Every crate is compiled once per target: the native release build (tests, binary, examples;
# nothing rebuilds later) and the wasm32 build (Cargo profile `web`) that the browser test and
# Trunk share, started beside the native smoke stages.
# Clippy lints our own crates while those builds compile them, so no dependency is compiled a
# second time just to be checked.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# CPU seconds used by finished child processes (a job run beside counts when awaited), into
# $cpu_now: with the wall time it shows how many of the machine's cores a stage kept busy.
# (`times` must run in this shell: a subshell does not see this shell's children.)
read_child_cpu() {
  times > target/.times
  cpu_now=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' target/.times)
}
stages=() stage_name="" stage_start=$SECONDS stage_cpu=0
stage() { # stage NAME: ends the running stage (recording its times) and starts NAME
  mkdir -p target; read_child_cpu
  if [[ -n $stage_name ]]; then
    stages+=("$(printf '%5ds %6ds CPU  %s' $((SECONDS - stage_start)) $((cpu_now - stage_cpu)) "$stage_name")")
    echo "[stage] $stage_name: $((SECONDS - stage_start))s, $((cpu_now - stage_cpu))s CPU" >&2
  fi
  stage_name=$1 stage_start=$SECONDS stage_cpu=$cpu_now
  [[ -n $1 ]] && echo "==> $1"
  return 0
}
report_stages() {
  stage ""
  mkdir -p target
  { echo "[test.sh] stage times:"; printf '%s\n' "${stages[@]}"
    echo "[test.sh] $((SECONDS / 60))m$((SECONDS % 60))s in all"; } | tee target/ci-stages.txt >&2
}
# Jobs that run beside the stages, where a stage leaves a core idle or waits on the network:
# each in its own process group (a failing run stops it and what it started), output in
# target/NAME.log, shown when a later stage awaits it.
declare -A beside_pids=()
beside() { # beside NAME CMD...
  local name=$1; shift
  mkdir -p target
  setsid "$@" > "target/$name.log" 2>&1 & beside_pids[$name]=$!
}
await() { # await NAME: waits for the job, shows its output, fails if it failed
  local status=0
  wait "${beside_pids[$1]}" || status=$?
  unset "beside_pids[$1]"
  cat "target/$1.log"
  ((status == 0)) || { echo "$1 failed (exit $status)" >&2; exit 1; }
}
on_exit() {
  for pid in "${beside_pids[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
  report_stages
}
trap on_exit EXIT
stage "setup: toolchain"; bash scripts/setup.sh
beside fetch-assets bash scripts/fetch-assets.sh
# The reference venv (PyTorch, transformers, PEFT, gguf: minutes of download and unpacking)
# for the export check, which runs beside the browser stage.
beside ref-venv bash tools/reference/setup-venv.sh exports
# The web toolchain (Chromium; wasm-bindgen and trunk, about ten minutes of compiling on a fresh
# machine) builds beside the native build, whose single-crate tails leave a core idle (measured:
# 1.6 of 2 cores busy). Started before the clippy wrapper is exported, so it never lints them.
beside setup-web bash scripts/setup-web.sh

stage "cargo fmt --check"; cargo fmt --all -- --check
stage "import structure"; python3 tools/check_imports.py
# `cargo clippy` is `cargo check` with clippy-driver as the workspace's rustc wrapper; the same
# wrapper on the real builds lints the same targets (every native target; the wasm32 library
# and its browser test) with -D warnings, and every later cargo call here (Trunk's too) sees it.
RUSTC_WORKSPACE_WRAPPER=$(rustup which clippy-driver)
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
stage "native build + clippy (tests, binary, examples)"
cargo test --release --workspace --no-run
cargo build --release --workspace --bins --examples
stage "setup: model, data, corpus"; await fetch-assets
stage "setup: web toolchain (what the native build left of it)"; await setup-web
stage "native tests"; cargo test --release --workspace
# The smoke stages below run the native binary on about one core (measured: their CPU time is
# their wall time), so the wasm32 build (library + browser test + clippy) starts beside them
# and finishes alone before the parity stage, which keeps both cores busy (beside it, both ran
# at half speed and lost time to each other's thread pools).
beside wasm-build bash -c 'start=$SECONDS
  cargo test --profile web --target wasm32-unknown-unknown --test web_session --no-run
  echo "wasm32 build + clippy: $((SECONDS - start))s"'
stage "CLI smoke: generate, perplexity, every task's data loader"
bin=target/release/scaleot
"$bin" generate "The capital of France is" --max-tokens 4 | tee target/ci-generate.txt
grep -q "Paris" target/ci-generate.txt
"$bin" perplexity README.md --max-tokens 300 --window 128 --stride 64
"$bin" eval --tasks arc_challenge,sciq,openbookqa,hellaswag --limit 8
stage "offsite-tuning smoke on the real model: emulator, finetune, plug-in, evaluate"
ot=target/ci-ot; rm -rf "$ot"; mkdir -p "$ot"
"$bin" emulator --adapters 2+2 --keep 13 --out "$ot/emu.json"
"$bin" task-data --task arc_easy --out "$ot/arc_easy.jsonl"
"$bin" finetune --emulator "$ot/emu.json" --data "$ot/arc_easy.jsonl" --steps 2 --batch-size 2 \
  --held-out 0.01 --checkpoint-every 1 --out "$ot/adapter.json"
"$bin" finetune --emulator "$ot/emu.json" --data "$ot/arc_easy.jsonl" --steps 3 --batch-size 2 \
  --held-out 0.01 --resume "$ot/adapter.ckpt" --out "$ot/adapter-resumed.json" 2>&1 | tee "$ot/resume.log"
grep -q "resumed at step 1" "$ot/resume.log" || { echo "resume from checkpoint failed" >&2; exit 1; }
# A checkpoint refuses to continue a different run (here: another learning rate).
if "$bin" finetune --emulator "$ot/emu.json" --data "$ot/arc_easy.jsonl" --steps 3 --batch-size 2 \
  --held-out 0.01 --lr 1e-3 --resume "$ot/adapter.ckpt" --out "$ot/x.json" 2> "$ot/refuse.log"; then
  echo "a resume with other settings must be refused" >&2; exit 1
fi
grep -q "belongs to another run" "$ot/refuse.log"
# `serve` checks the bundle's sha256 once at start: a flipped byte is refused before serving.
mkdir -p "$ot/dist"; echo page > "$ot/dist/index.html"
cp "$ot/emu.json" "$ot/bad-emu.json"; cp "$ot/emu.safetensors" "$ot/bad-emu.safetensors"
printf 'x' | dd of="$ot/bad-emu.safetensors" bs=1 seek=100000 conv=notrunc status=none
if "$bin" serve --emulator "$ot/bad-emu.json" --dist "$ot/dist" --port 0 2> "$ot/serve.log"; then
  echo "serve must refuse a corrupted bundle" >&2; exit 1
fi
grep -q "is corrupted" "$ot/serve.log"
"$bin" eval --tasks arc_easy --limit 8 --emulator "$ot/emu.json" --adapter "$ot/adapter.json"
"$bin" eval --tasks arc_easy --limit 8 --adapter "$ot/adapter.json"
"$bin" plugin --adapter "$ot/adapter.json" --out "$ot/plugged"
"$bin" eval --tasks arc_easy --limit 8 --model "$ot/plugged"
stage "crash safety: finetune killed at 50 random moments resumes to the same adapter"
bash tools/kill_resume.sh 50
stage "LoRA on chat data (the model's chat template), merged plug-in; distilled emulator"
"$bin" finetune --emulator "$ot/emu.json" --data tests/fixtures/chat-sample.jsonl --steps 2 \
  --batch-size 2 --held-out 0.2 --lora-rank 4 --out "$ot/lora.json"
"$bin" plugin --adapter "$ot/lora.json" --out "$ot/plugged-lora" | tee "$ot/plugin-lora.log"
grep -q "LoRA r=4" "$ot/plugin-lora.log"
"$bin" eval --tasks arc_easy --limit 8 --model "$ot/plugged-lora"
"$bin" emulator --adapters 2+2 --keep 13 --distill --distill-steps 2 --distill-batch 2 \
  --out "$ot/emu-distilled.json"
stage "ScaleOT smoke: importance (checkpoint + resume), scaleot emulator with SRC, report"
imp_opts=(--steps 3 --batch 2 --val-batch 2 --candidates 3 --rl-every 2 --loss-stride 2)
"$bin" importance "${imp_opts[@]}" --checkpoint-every 2 --out "$ot/imp.json"
"$bin" importance "${imp_opts[@]}" --resume "$ot/imp.ckpt" --out "$ot/imp.json" 2>&1 | tee "$ot/imp.log"
grep -q "resumed at step 2" "$ot/imp.log"
# Candidates scored on the training batches (the harmonizer pass reused), in antithetic pairs;
# --settle reaches the manifest (whether and when scoring stops is the unit test
# scoring_stops_once_settled_or_after_rl_steps_and_keeps_what_it_had's to check).
"$bin" importance --steps 2 --batch 2 --candidates 2 --score-on training --antithetic --settle 1 \
  --rl-every 1 --checkpoint-every 0 --out "$ot/imp-train.json"
grep -q '"score_on": "training"' "$ot/imp-train.json"
grep -q '"antithetic": true' "$ot/imp-train.json"
grep -q '"settle": 1' "$ot/imp-train.json"
grep -q '"settled_at": ' "$ot/imp-train.json"
# Harmonizers fitted layer by layer (no backward through the raw layers).
"$bin" importance --steps 2 --batch 2 --val-batch 2 --candidates 2 --harmonizer-loss layer \
  --checkpoint-every 0 --out "$ot/imp-layer.json"
grep -q '"harmonizer_loss": "layer"' "$ot/imp-layer.json"
# Refusals: another run's importance checkpoint, scores made for another adapter split, and
# corrupted harmonizer weights each stop with a message naming what to do.
refused() { # refused LOG PATTERN CMD...: CMD must fail and say PATTERN
  local log=$1 pattern=$2; shift 2
  if "$@" 2> "$log"; then echo "expected a refusal: $*" >&2; exit 1; fi
  grep -q "$pattern" "$log" || { cat "$log" >&2; exit 1; }
}
refused "$ot/r1.log" "belongs to another run" "$bin" importance "${imp_opts[@]}" --lr 1e-2 \
  --resume "$ot/imp.ckpt" --out "$ot/imp-other.json"
refused "$ot/r2.log" "same split" "$bin" emulator --method scaleot --importance "$ot/imp.json" \
  --adapters 3+3 --alpha 0.5 --out "$ot/x.json"
refused "$ot/r4.log" "rl-every 0: must be at least 1" "$bin" importance --rl-every 0 \
  --out "$ot/imp-other.json"
refused "$ot/r5.log" "built without CUDA" "$bin" importance --device cuda --out "$ot/imp-other.json"
refused "$ot/r6.log" "loss weights must be finite, not negative" "$bin" emulator --adapters 2+2 \
  --keep 13 --distill --distill-steps 1 --distill-lm-weight -1 --out "$ot/emu-bad.json"
cp "$ot/imp.json" "$ot/bad-imp.json"; cp "$ot/imp.safetensors" "$ot/bad-imp.safetensors"
printf 'x' | dd of="$ot/bad-imp.safetensors" bs=1 seek=200 conv=notrunc status=none
refused "$ot/r3.log" "corrupted" "$bin" emulator --method scaleot --importance "$ot/bad-imp.json" \
  --alpha 0.5 --out "$ot/x.json"
# A sweep over two sizes: the distillation at one of them, SRC for ScaleOT only
# (--src-methods) with a second rank rule, LoRA on every layer as the upper bound; every
# difference with its interval.
sweep=(--tasks arc_easy --methods uniform-drop,uniform-drop-distill@0.5,scaleot@0.5
  --importance "$ot/imp.json" --betas 1,0.5 --src-rules share,energy --distill-steps 1 --steps 1
  --batch-size 2 --lora-rank 2 --limit 4 --held-out 0.01 --full-ft all --out "$ot/report")
"$bin" report --alphas 0.5,0.25 "${sweep[@]}"
grep -q "scaleot a=0.5 b=0.5: Plug-in" "$ot/report/report.md"
grep -q "| scaleot a=0.5 b=0.5 energy: SRC change of Plug-in | [-+][0-9.]* \[" "$ot/report/report.md"
grep -q "uniform-drop a=0.25 b=1: Plug-in" "$ot/report/report.md"
if grep -q "uniform-drop a=0.5 b=0.5\|scaleot a=0.25" "$ot/report/report.md"; then exit 1; fi
grep -q "| Full FT (every layer) |" "$ot/report/report.md"
grep -q "| scaleot a=0.5 b=1: Plug-in − uniform-drop's | [-+][0-9.]* \[" "$ot/report/report.md"
grep -q "| ScaleOT plug-in − uniform LayerDrop plug-in, a=0.5 |" "$ot/report/report.md"
grep -q "| ScaleOT importance.*| 3 | 2 x 128 (+2 scored) |" "$ot/report/report.md"
grep -q "| Offsite-Tuning distillation (uniform-drop-distill a=0.5 b=1) | 1 |" "$ot/report/report.md"
test -s "$ot/report/privacy-utility.svg"
test -s "$ot/report/size-utility.svg"
# --cached-only: a wider sweep's report from the same cache, nothing run and the cache untouched,
# the cells still to run listed.
cp "$ot/report/results.json" "$ot/cache-before.json"
"$bin" report --alphas 0.5,0.25,0.75 "${sweep[@]}" --cached-only > "$ot/cached.log"
cmp "$ot/report/results.json" "$ot/cache-before.json"
grep -q "emulator uniform-drop a=0.75 b=1 and its cells" "$ot/cached.log"
if grep -q "uniform-drop a=0.25 b=1/plug-in" "$ot/cached.log"; then exit 1; fi
grep -q "| uniform-drop a=0.25 b=1: Plug-in | [0-9]" "$ot/report/report.md"
grep -q "| uniform-drop a=0.75 b=1: Plug-in | – |" "$ot/report/report.md"
rm -rf "$ot"
stage "wasm32 build + clippy: what the smoke stages above left of it"
await wasm-build
# Trunk's last pass (wasm-opt) is single-threaded for minutes: the page is built beside the
# parity stage.
beside build-page bash scripts/build-page.sh
stage "lm-evaluation-harness parity: full ARC-Easy, PIQA and COPA"
bash tools/reference/eval_parity.sh
# The browser stage mostly waits on Chromium (measured: 82 s CPU in 381 s): what plug-in
# writes is loaded by transformers, PEFT and gguf beside it.
await ref-venv
beside export-check .venv-ref/bin/python tools/reference/check_exports.py
stage "browser: WebGPU training parity (wasm-bindgen-test), the page end to end, privacy"
await build-page
bash scripts/page-test.sh --page-built
stage "exports: transformers, PEFT and gguf load what plug-in writes (run beside the browser)"
await export-check
rm -rf target/export-check
echo "all checks passed"
