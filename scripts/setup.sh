#!/usr/bin/env bash
# Creates .venv (once) and installs elmrec with the pinned CPU build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
