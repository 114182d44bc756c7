#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): GPU vs CPU outputs, pairs/s at 1024 px, slide mm²/min,
# training steps/s on one CUDA GPU, in under 8 minutes. Installs nothing beyond the project
# (`make install` when .venv is missing). Exit 3 when there is no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv/bin/python || make install >/dev/null
exec .venv/bin/python bench/gpu_check.py "$@"
