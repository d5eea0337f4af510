#!/usr/bin/env bash
# Test tooling only: a venv with PyTorch + transformers as the independent reference
# (goldens, lm-eval parity, peer benchmarks). The product never imports it.
set -euo pipefail
cd "$(dirname "$0")/../.."
V=${REF_VENV:-.venv-ref}
if ! "$V/bin/python" -c "import torch, transformers, gguf" 2>/dev/null; then
  python3 -m venv "$V"
  "$V/bin/pip" install --quiet torch transformers gguf numpy accelerate
fi
echo "$V ready"
