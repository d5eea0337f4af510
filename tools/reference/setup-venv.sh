#!/usr/bin/env bash
# Test tooling only: a venv with PyTorch + transformers as the independent reference
# (goldens, lm-eval parity, peer benchmarks). The product never imports it.
set -euo pipefail
cd "$(dirname "$0")/../.."
V=${REF_VENV:-.venv-ref}
if ! "$V/bin/python" -c "import torch, transformers, gguf, lm_eval" 2>/dev/null; then
  python3 -m venv "$V"
  "$V/bin/pip" install --quiet torch transformers gguf numpy accelerate lm_eval==0.4.13
fi
echo "$V ready"
