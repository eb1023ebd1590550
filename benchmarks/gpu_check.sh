#!/usr/bin/env bash
# The GPU check of issue 17 in one command, from a fresh checkout on a machine with one NVIDIA GPU:
#   benchmarks/gpu_check.sh
# installs onnxlrp with its [cuda] extra (onnxruntime-gpu with the CUDA and cuDNN libraries) and the benchmarks'
# torch, transformers, Zennit and LXT into .venv, then runs benchmarks/gpu_check.py: Explainer.provider is CUDA, CUDA
# and CPU relevance agree to 1e-4 (MLP, ResNet-18, a 2-layer BERT-shaped encoder), compare.py's table for ResNet-50
# and transformers_bench.py's for the BERT-base-shaped encoder at batch 1/8/32 with IO binding, Zennit / LXT on
# torch's CUDA device beside them.
# Environment:
#   ONNXLRP_GPU_CHECK_CPU=1      the same steps on the CPU (CPU vs CPU, small sizes): tests this script here
#   ONNXLRP_GPU_CHECK_INSTALL=0  skip the install and use PYTHON as it is (a machine without a package index)
#   PYTHON=...                   the interpreter (default .venv/bin/python, created with python3 when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [ "${ONNXLRP_GPU_CHECK_INSTALL:-1}" = 1 ]; then
  [ -x "$PYTHON" ] || { python3 -m venv .venv && PYTHON=.venv/bin/python; }
  echo "installing onnxlrp[cuda] (constraints.txt pins torch), zennit and lxt (alone: they ask for torch unpinned) ..."
  "$PYTHON" -m pip install -q -c constraints.txt -e '.[cuda,test]'
  "$PYTHON" -m pip install -q --no-deps zennit==0.5.1 lxt==2.1
fi
args=()
[ "${ONNXLRP_GPU_CHECK_CPU:-0}" = 1 ] && args+=(--cpu)
exec "$PYTHON" benchmarks/gpu_check.py "${args[@]}" "$@"
