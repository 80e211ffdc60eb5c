#!/usr/bin/env bash
# Set up, then run the default comparison on the offline drug-review task.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/peftlab run configs/drugreview.yaml "$@"
