#!/usr/bin/env bash
# Drift check: install the NEWEST versions pyproject.toml's ranges allow into a fresh venv
# (.venv-latest, rebuilt each time) and run the test suite there. Not part of CI's pass/fail.
# Run it before refreshing requirements.lock (scripts/lock.sh), and whenever a dependency
# releases: it finds the next break before a user does. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
rm -rf .venv-latest
"$PY" -m venv .venv-latest
. .venv-latest/bin/activate
quiet() { grep -v -e "^WARNING: Location" -e "^\[notice\]" || true; }
# shellcheck disable=SC2086
pip install -q ${TORCH_SPEC:-torch==2.13.0} 2>&1 | quiet
pip install -q --upgrade --upgrade-strategy eager -e ".[test]" 2>&1 | quiet
grep -v '^#' requirements-offline.in | xargs pip install -q --no-deps 2>&1 | quiet
echo "newest allowed versions:"
pip list --format=freeze 2>/dev/null | grep -i -E '^(transformers|peft|accelerate|typer|click|kernels|bitsandbytes|datasets|pydantic|huggingface.hub|tokenizers|safetensors)=='
HF_HUB_OFFLINE=1 python -m pytest -q "$@"
