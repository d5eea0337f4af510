#!/usr/bin/env bash
# The main job on a fresh machine: fetch the real model and evaluation data, build the owner
# binary, greet with a generation, then evaluate SmolLM2-135M zero-shot on ARC-Easy and PIQA.
# Pass other eval flags through, e.g. `bash scripts/run.sh --tasks sciq --limit 100`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
bash scripts/fetch-assets.sh
cargo build --release -p scaleot-owner
bin=target/release/scaleot
"$bin" generate "The capital of France is" --max-tokens 12
if [ $# -eq 0 ]; then set -- --tasks arc_easy,piqa; fi
"$bin" eval "$@"
