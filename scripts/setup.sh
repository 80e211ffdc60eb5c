#!/usr/bin/env bash
# Create .venv and install peftlab with exactly the versions in requirements.lock.
# torch is installed FIRST and pinned: an unpinned torch pulls several GB of CUDA wheels.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu");
# a TORCH_SPEC torch brings its own dependencies (a CUDA build needs its nvidia-* packages).
# requirements.lock holds every other package, hash-checked, installed without resolving anything
# (refresh it with scripts/lock.sh, after scripts/test-latest.sh passes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
quiet() { grep -v -e "^WARNING: Location" -e "^\[notice\]" || true; }
if [ -n "${TORCH_SPEC:-}" ]; then
  # shellcheck disable=SC2086
  pip install -q $TORCH_SPEC 2>&1 | quiet
else
  pip install -q --no-deps torch==2.13.0 2>&1 | quiet  # its dependencies are in the lock
fi
pip install -q --no-deps --require-hashes -r requirements.lock 2>&1 | quiet
# peftlab itself, editable; its dependencies all came from the lock (setuptools too: no build isolation)
pip install -q --no-deps --no-build-isolation -e . 2>&1 | quiet
# the lock must be whole: every installed package's requirements met (a TORCH_SPEC torch may
# differ), except those the offline packages declare and we skip on purpose (requirements-offline.in)
if [ -z "${TORCH_SPEC:-}" ]; then
  offline=$(grep -o '^[a-z0-9-]*' requirements-offline.in | paste -sd'|')
  broken=$(pip check 2>&1 | grep -v -i -E "^($offline) |^No broken requirements" || true)
  [ -z "$broken" ] || { echo "$broken" >&2; echo "requirements.lock is not whole (see above)" >&2; exit 1; }
fi
# Fashion-MNIST (the offline image task) comes from Debian; without apt (or root) say how to get it.
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; } >/dev/null 2>&1 \
      || echo "note: apt-get install dataset-fashion-mnist failed; configs/fashion_mnist.yaml needs it (or set task.data_dir)"
  else
    echo "note: configs/fashion_mnist.yaml needs Fashion-MNIST: run 'sudo apt-get install dataset-fashion-mnist'" \
         "or point task.data_dir at a folder with the four IDX .gz files"
  fi
fi
python -c "import torch, peftlab; print('peftlab', peftlab.__version__, 'with torch', torch.__version__)"
