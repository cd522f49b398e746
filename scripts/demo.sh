#!/usr/bin/env bash
# Sets up the environment and runs the built-in demo (synthetic data, no outside files).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/elmrec demo --out demo "$@"
