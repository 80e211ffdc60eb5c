#!/usr/bin/env bash
# Set up, then run the test suite (tiny random models; no network, no ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q "$@"
