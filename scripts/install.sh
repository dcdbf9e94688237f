#!/usr/bin/env bash
# Create .venv and install vlens with its test and web extras.
# torch is installed first and pinned: on a CPU machine pip takes the 2.13.0 CPU build; on a GPU machine set
# TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128") to choose a build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Chromium for the browser tests (Debian's package: Playwright cannot download browsers here). Installed with
# apt-get when this runs as root on a Debian-like system; otherwise a note says how (the tests then say it too).
if [ -x /usr/bin/chromium ]; then
  :
elif [ "${VLENS_NO_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser tests (apt-get) ..."
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver \
      >/dev/null; } \
    || echo "note: apt-get could not install chromium; the browser tests will fail until it is installed"
else
  echo "note: chromium is not installed and this script can only install it as root with apt-get; for the" \
       "browser tests run: sudo apt-get install -y --no-install-recommends chromium chromium-driver"
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install -q -e ".[dev]"
# Reference packages for the checkpoint tier (tests/test_reference_checkpoints.py): timm and open_clip, pinned, with
# --no-deps into .ref-packages/, never into the venv (their torchvision dependency fails beside this torch and breaks
# transformers). Only a test subprocess puts them (and a torchvision stub) on its path. Best effort: a note otherwise.
if [ -d .ref-packages/timm-1.0.31.dist-info ] && [ -d .ref-packages/open_clip_torch-3.3.0.dist-info ]; then
  :
else
  .venv/bin/python -m pip install -q --no-deps --upgrade --target .ref-packages timm==1.0.31 open_clip_torch==3.3.0 \
    || echo "note: could not install timm and open_clip into .ref-packages; the reference checkpoint tests skip" \
            "(and fail under CI=true) until \`bash scripts/install.sh\` can reach the package index"
fi
.venv/bin/python -c "import torch, transformers, fastapi, faiss, vlens; print('vlens', vlens.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
# Real test images (graffiti and aloe pairs with ground truth, held-out photos) from Debian's opencv-doc, for the
# tests, CI and the lab: best effort, a note (not a failure) where apt-get or the network is missing.
.venv/bin/vlens data fetch opencv-samples \
  || { command -v apt-get >/dev/null 2>&1 && apt-get update -qq >/dev/null 2>&1 && .venv/bin/vlens data fetch opencv-samples; } \
  || echo "note: could not fetch the OpenCV sample images; tests that need them skip (fail under CI=true)"
