#!/usr/bin/env bash
# Test tooling only: a venv with PyTorch + transformers (+ PEFT, gguf) as the independent
# reference (goldens, lm-eval parity, the export check, peer benchmarks). The product never
# imports it.
#   bash tools/reference/setup-venv.sh [exports|all]
# `exports` (what CI needs: tools/reference/check_exports.py) leaves out lm-evaluation-harness,
# which only regenerating the evaluation goldens needs; `all` is the default.
set -euo pipefail
cd "$(dirname "$0")/../.."
V=${REF_VENV:-.venv-ref}
pkgs=(torch==2.15.0 transformers==5.24.0 peft==0.21.2 gguf==0.19.0 safetensors==0.8.0 numpy accelerate)
modules="torch, transformers, peft, gguf, safetensors"
if [[ ${1:-all} == all ]]; then
  pkgs+=(lm_eval==0.4.13)
  modules+=", lm_eval"
fi
if ! "$V/bin/python" -c "import $modules" 2>/dev/null; then
  python3 -m venv "$V"
  "$V/bin/pip" install --quiet "${pkgs[@]}"
fi
echo "$V ready"
