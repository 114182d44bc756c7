#!/usr/bin/env bash
# CI: build a small `histozoom report` (synthetic dataset, perturbed predictions, evaluate,
# report), render it in headless Chromium and check that the screenshot is not blank.
# Installs Debian's chromium when /usr/bin/chromium is missing (needs root, as in CI).
# REPORT_SCREENSHOT=path keeps the screenshot (e.g. as a CI artefact).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HZ=.venv/bin/histozoom
CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
  echo "[report_screenshot] installing chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$HZ" synth "$work/ds" --preset context --n-train 1 --n-val 1 --n-test 6 --cell-size 128 --tissue-size 128 \
  --cell-mpp 0.4 --tissue-mpp 1.6 >/dev/null
"$PY" .ci/perturbed_predictions.py "$work/ds" test "$work/a.json" --seed 0
"$PY" .ci/perturbed_predictions.py "$work/ds" test "$work/b.json" --seed 1 --drop 0.3
"$HZ" evaluate --pred "$work/a.json" --pred "$work/b.json" --gt "$work/ds" --split test --subgroups \
  --bootstrap 200 --out "$work/ev" >/dev/null 2>&1
"$HZ" report --eval "$work/ev" --out "$work/report.html"

if ! timeout 180 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d -p "$work")" --window-size=1280,2000 \
    --screenshot="$work/shot.png" "file://$work/report.html" >"$work/chromium.log" 2>&1; then
  cat "$work/chromium.log" >&2
  echo "[report_screenshot] chromium failed" >&2
  exit 1
fi

"$PY" - "$work/shot.png" <<'PYEOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

path = Path(sys.argv[1])
if not path.is_file():
    sys.exit(f"[report_screenshot] no screenshot at {path}")
px = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
std = float(px.std())
non_white = float((px.min(axis=2) < 245).mean())
print(f"[report_screenshot] {px.shape[1]}x{px.shape[0]} px, pixel std {std:.1f}, non-white {100 * non_white:.1f} %")
if std < 10 or non_white < 0.02:
    sys.exit("[report_screenshot] the screenshot is blank")
PYEOF

if [ -n "${REPORT_SCREENSHOT:-}" ]; then
  cp "$work/shot.png" "$REPORT_SCREENSHOT"
fi
echo "[report_screenshot] ok"
