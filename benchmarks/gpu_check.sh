#!/usr/bin/env bash
# GPU check (issue: speed and big photos). Needs torch with CUDA and the real weights
# (or NST_WEIGHTS=random for a smoke run). Prints one JSON report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec "${PYTHON:-python3}" gpu_check.py "$@"
