#!/usr/bin/env bash
# README command 1: set everything up, build the embedded default bundles, run all four tasks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/edgesight build-defaults
.venv/bin/edgesight demo "$@"
