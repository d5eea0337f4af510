#!/usr/bin/env bash
# Crash safety of `scaleot finetune`: kills a real run (SIGKILL) at random moments, resumes it
# from whatever checkpoint the kill left, and checks that the adapter it finally writes is
# bit-identical to an uninterrupted run's. Runs on the tests' tiny model (steps take
# milliseconds, so kills land in start-up, steps, checkpoint writes and the adapter write).
#   bash tools/kill_resume.sh [KILLS (default 50)] [SEED]
# Needs target/release/scaleot and target/release/examples/tiny_model (the native build).
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-50} seed=${2:-$RANDOM}
RANDOM=$seed
bin=target/release/scaleot
out=target/kill-resume
rm -rf "$out"; mkdir -p "$out"
target/release/examples/tiny_model "$out/model" > /dev/null
"$bin" emulator --model "$out/model" --adapters 1+1 --keep 2 --out "$out/emu.json" > /dev/null 2>&1
for i in $(seq 200); do echo "note $i: the cat sat on the mat while the dog slept by the door."; done > "$out/notes.txt"
# The same training settings every time (a plain command, so that $! is the trainer itself).
train=(finetune --emulator "$out/emu.json" --data "$out/notes.txt" --steps 60 --batch-size 2
  --seq-len 32 --lora-rank 4 --checkpoint-every 1)
start=$SECONDS
t0=$(date +%s%N)
"$bin" "${train[@]}" --out "$out/whole.json" > /dev/null 2>&1
whole_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "uninterrupted run: ${whole_ms} ms; killing at random moments within it (seed $seed)"

killed=0 resumed=0 runs=0
rm -f "$out/cut.ckpt" "$out/cut.json" "$out/cut.safetensors"
while ((killed < kills)); do
  args=()
  [[ -f $out/cut.ckpt ]] && args=(--resume "$out/cut.ckpt") && resumed=$((resumed + 1))
  "$bin" "${train[@]}" --out "$out/cut.json" "${args[@]}" > "$out/run.log" 2>&1 &
  pid=$!
  ms=$(( (RANDOM * 32768 + RANDOM) % whole_ms ))
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  if kill -9 "$pid" 2> /dev/null; then
    wait "$pid" 2> /dev/null || true
    killed=$((killed + 1))
  else
    # The run ended before the kill: it must have succeeded; start again from nothing.
    wait "$pid" || { cat "$out/run.log"; echo "a run failed on its own" >&2; exit 1; }
    cmp "$out/whole.safetensors" "$out/cut.safetensors" \
      || { echo "a finished run differs from the uninterrupted one" >&2; exit 1; }
    rm -f "$out/cut.ckpt" "$out/cut.json" "$out/cut.safetensors"
  fi
  runs=$((runs + 1))
done
# The last killed run, resumed to the end.
args=()
[[ -f $out/cut.ckpt ]] && args=(--resume "$out/cut.ckpt")
"$bin" "${train[@]}" --out "$out/cut.json" "${args[@]}" > "$out/run.log" 2>&1 \
  || { cat "$out/run.log"; exit 1; }
cmp "$out/whole.safetensors" "$out/cut.safetensors" \
  || { echo "the resumed adapter differs from the uninterrupted run's" >&2; exit 1; }
echo "kill-and-resume: $killed kills in $runs runs ($resumed resumed from a checkpoint), every adapter bit-identical to the uninterrupted run's ($((SECONDS - start))s)"
