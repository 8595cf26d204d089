#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (CUDA 12): install the GPU builds of the three runtimes into .venv,
# then run every task's default bundle on device="cuda" against the CPU and print a timing table.
#   bash benchmarks/gpu_check.sh            (after `bash scripts/setup.sh` and `edgesight build-defaults`)
# Exits non-zero when a task fails on CUDA. Outputs may differ in the last bits on GPU (other kernels):
# the table says where they are not identical; inspect cpu_output / cuda_output in the JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
PIP=".venv/bin/python -m pip install -q"
# onnxruntime-gpu replaces onnxruntime (same import name; both installed breaks the import)
.venv/bin/python -m pip uninstall -y -q onnxruntime
$PIP -c constraints.txt "onnxruntime-gpu" || $PIP "onnxruntime-gpu"
# llama.cpp with CUDA (the portable CPU wheel stays cached in .cache/wheels for CPU machines)
CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  $PIP --force-reinstall --no-deps --no-cache-dir --no-binary :all: "llama-cpp-python==0.3.36"
.venv/bin/python - <<'PY'
import onnxruntime, llama_cpp
print("onnxruntime providers:", onnxruntime.get_available_providers())
print("llama.cpp GPU offload:", llama_cpp.llama_supports_gpu_offload())
PY
OMP_NUM_THREADS=4 HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.gpu_check --threads 4 --json .cache/bench/gpu_check.json
