#!/usr/bin/env bash
# README command 2 (and CI): set everything up, build the default bundles, run the tests with one
# thread everywhere and no network.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 EDGESIGHT_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 EDGESIGHT_OFFLINE=1
.venv/bin/edgesight build-defaults --threads 1
.venv/bin/python -m pytest "$@"
