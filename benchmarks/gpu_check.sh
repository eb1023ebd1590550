#!/usr/bin/env bash
# The GPU check of issue 17 in one command, from a fresh checkout on a machine with one NVIDIA GPU:
#   benchmarks/gpu_check.sh
# installs onnxlrp with its [cuda] extra (onnxruntime-gpu with the CUDA and cuDNN libraries) and the benchmark's
# torch + Zennit into .venv, then runs benchmarks/gpu_check.py: Explainer.provider is CUDA, CUDA and CPU relevance
# agree to 1e-4, compare.py's table for ResNet-50 and VGG-16 at batch 1/8/32 with IO binding.
# Environment:
#   ONNXLRP_GPU_CHECK_CPU=1      the same steps on the CPU (CPU vs CPU, MLP and ResNet-18): tests this script here
#   ONNXLRP_GPU_CHECK_INSTALL=0  skip the install and use PYTHON as it is (a machine without a package index)
#   PYTHON=...                   the interpreter (default .venv/bin/python, created with python3 when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [ "${ONNXLRP_GPU_CHECK_INSTALL:-1}" = 1 ]; then
  [ -x "$PYTHON" ] || { python3 -m venv .venv && PYTHON=.venv/bin/python; }
  echo "installing onnxlrp[cuda] (constraints.txt pins torch) and zennit (alone, it asks for torch unpinned) ..."
  "$PYTHON" -m pip install -q -c constraints.txt -e '.[cuda,test]'
  "$PYTHON" -m pip install -q --no-deps zennit==0.5.1
fi
args=()
[ "${ONNXLRP_GPU_CHECK_CPU:-0}" = 1 ] && args+=(--cpu)
exec "$PYTHON" benchmarks/gpu_check.py "${args[@]}" "$@"
