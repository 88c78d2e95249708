#!/usr/bin/env bash
# Create .venv (once) and install the harness with its test tools into it.
# torch and torchvision are pinned first: an unpinned torch would pull a
# multi-GB CUDA build from the package index.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
