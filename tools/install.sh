#!/usr/bin/env bash
# Creates .venv and installs eden_lib with every dependency, pinned by requirements-lock.txt (torch==2.13.0).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# (the filter drops the "Location ... is ignored" notes some machines' pip configuration prints per package)
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements-lock.txt -e ".[dev]" \
  2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
echo "installed: $(.venv/bin/python -c 'import torch, monai; print("torch", torch.__version__, "monai", monai.__version__)')"
