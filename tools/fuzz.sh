#!/usr/bin/env bash
# Fuzzes every parser a file reaches (fuzz/src/lib.rs) with libFuzzer for a given time each,
# starting from seeds made from real files, and prints a table: target, minutes, execs, new
# corpus entries, crashes. A crash, a hang over 10 s or an allocation over 2 GB stops a target
# and leaves the input under fuzz/artifacts/TARGET/ (replay: `cargo +nightly fuzz run TARGET FILE`).
#   [JOBS=2] bash tools/fuzz.sh [SECONDS per target (default 600)] [TARGET...]
# Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`); the first build takes a while (the whole model stack, instrumented).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}; shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
# Seeds from the real files, written by the stable test that replays the same targets.
SCALEOT_FUZZ_SEEDS="$PWD/target/fuzz-seeds" cargo test --release --test native fuzz_targets -q > /dev/null
# No sanitizer: the code is safe Rust; libFuzzer still catches panics, aborts, hangs and RSS.
# Debug assertions on: integer overflow is a crash too.
cargo +nightly fuzz build -s none -a
table=target/fuzz-table.md
printf '| target | minutes | execs | corpus | crashes |\n|---|---|---|---|---|\n' > "$table"
# One target: its seeds copied into its corpus, libFuzzer for $seconds, a row of the table.
fuzz_one() {
  local t=$1 corpus=fuzz/corpus/$1 log=target/fuzz-$1.log crashes=0
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  cp -n target/fuzz-seeds/"$t"/* "$corpus"/ 2> /dev/null || true
  # -max_len: the largest seed (bundles and models are a few hundred KB).
  local max_len
  max_len=$(find "$corpus" -type f -printf '%s\n' | sort -n | tail -1)
  if ! cargo +nightly fuzz run -s none -a "$t" "$corpus" -- -max_total_time="$seconds" \
      -timeout=10 -rss_limit_mb=2048 -max_len="$((max_len > 4096 ? max_len : 4096))" \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 > "$log" 2>&1; then
    crashes=1
    echo "$t: FAILED, see $log and fuzz/artifacts/$t/" >&2
  fi
  local execs entries minutes
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  entries=$(find "$corpus" -type f | wc -l)
  minutes=$(awk -v s="$seconds" 'BEGIN { printf "%.1f", s / 60 }')
  printf '| %s | %s | %s | %s | %s |\n' "$t" "$minutes" "$execs" "$entries" "$crashes" | tee -a "$table"
  return "$crashes"
}
# JOBS targets at a time (default 1; each is one process on one core).
status=0 running=0
for t in "${targets[@]}"; do
  if ((running >= ${JOBS:-1})); then
    wait -n || status=1
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
while ((running > 0)); do
  wait -n || status=1
  running=$((running - 1))
done
cat "$table"
exit $status
