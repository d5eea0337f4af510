#!/usr/bin/env bash
# The test command: sets up what is missing, fetches the real model and data, then runs
# formatting and lint checks, all native tests, a short real evaluation, and the wasm32 build.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'echo "[test.sh] $((SECONDS / 60))m$((SECONDS % 60))s elapsed" >&2' EXIT
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
bash scripts/fetch-assets.sh

echo "==> cargo fmt --check"; cargo fmt --all -- --check
echo "==> clippy"; cargo clippy --release --workspace --all-targets -- -D warnings
echo "==> native tests"; cargo test --release --workspace
echo "==> CLI smoke: generate, perplexity, every task's data loader"
cargo build --release -p scaleot-owner
bin=target/release/scaleot
"$bin" generate "The capital of France is" --max-tokens 4 | tee target/ci-generate.txt
grep -q "Paris" target/ci-generate.txt
"$bin" perplexity README.md --max-tokens 300 --window 128 --stride 64
"$bin" eval --tasks arc_challenge,sciq,openbookqa,hellaswag --limit 8
echo "==> lm-evaluation-harness parity: full ARC-Easy and PIQA (about 7 minutes)"
bash tools/reference/eval_parity.sh
echo "==> wasm32 build of the core"; cargo build --release --target wasm32-unknown-unknown -p scaleot --features wgpu
echo "all checks passed"
