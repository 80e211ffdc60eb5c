#!/usr/bin/env bash
# The one command a GPU machine runs for issue 24 (item 3): bench/gpu.py and the CUDA-only tests.
#
#   bash bench/gpu_device.sh            (from the repository root; writes into $OUT)
#   GPU_PROBE=1 bash bench/gpu_device.sh    (the same set-up, then bench/gpu_nan_probe.py only:
#                                        GPU_PROBE_ARGS / GPU_PROBE_TIMEOUT as GPU_BENCH_* below)
#
# Needs, beside the checkout: .whl/ (python bench/gpu_wheels.py: the locked transformers, peft,
# accelerate, pydantic, bitsandbytes... for CPython 3.12) and .gpudata/ (python bench/gpu.py
# --prepare-data .gpudata: model configs, tokenizers, a MultiNLI slice). Made for a machine with
# no network and its own torch: the wheels go to /tmp/site, ahead of its site-packages. If the
# locked transformers cannot be imported over that machine's packages, the run falls back to the
# machine's own transformers / huggingface_hub (the JSON records which versions ran).
# Every part has its own timeout, so a hang costs that part only; about 4-5 minutes in all.
set -u
OUT=${OUT:-runs/bench_gpu/device}
PY=${PY:-python3}
[ -x /opt/torch/.venv/bin/python3 ] && [ "$PY" = python3 ] && PY=/opt/torch/.venv/bin/python3
SITE=/tmp/site
HF_WHEELS="transformers- huggingface_hub- httpx2- httpcore2- truststore- kernels- tomlkit-"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PEFTLAB_CACHE=/tmp/peftlab_cache HF_HOME=/tmp/hf_home
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/device.log"; }

install() {  # wheels (all of .whl, or all but the HF set) into $SITE
    rm -rf "$SITE"
    local wheels=()
    for w in .whl/*.whl; do
        skip=0
        if [ "$1" = no-hf ]; then for p in $HF_WHEELS; do case "$(basename "$w")" in "$p"*) skip=1 ;; esac; done; fi
        [ $skip = 0 ] && wheels+=("$w")
    done
    timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "${wheels[@]}" 2>&1 | tail -5 | tee -a "$OUT/device.log"
}

imports() {
    timeout 60 "$PY" -c "
import importlib.metadata as md, peftlab, torch, transformers, peft, accelerate, pydantic, bitsandbytes
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(),
      *[f'{p} {md.version(p)}' for p in ('transformers', 'peft', 'accelerate', 'pydantic', 'bitsandbytes', 'huggingface_hub', 'tokenizers', 'safetensors')])
import peftlab.runners.experiment, peftlab.methods.qlora, tempfile
from transformers import AutoModelForSequenceClassification, BertConfig
with tempfile.TemporaryDirectory() as d:  # a load, not only an import (5.25 loads need kernels)
    AutoModelForSequenceClassification.from_config(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(d)
    AutoModelForSequenceClassification.from_pretrained(d)
print('load ok')
" 2>&1 | tail -8 | tee -a "$OUT/device.log"
    return "${PIPESTATUS[0]}"
}

say "machine"
{ nvidia-smi; "$PY" --version; "$PY" -m pip list 2>/dev/null; } > "$OUT/machine.txt" 2>&1
export PYTHONPATH="$SITE:$PWD"
WHEELS=${GPU_WHEELS:-all}  # GPU_WHEELS=no-hf: keep the machine's transformers / huggingface_hub
say "install wheels: $WHEELS"
install "$WHEELS"
if ! imports && [ "$WHEELS" = all ]; then
    say "the locked transformers does not import here: falling back to the machine's transformers"
    install no-hf
    imports || say "imports still fail: the benchmark will record what fails"
fi

if [ "${GPU_PROBE:-0}" = 1 ]; then  # GPU_PROBE=1: the NaN probe (bench/gpu_nan_probe.py) instead of gpu.py and the tests
    say "bench/gpu_nan_probe.py"
    # shellcheck disable=SC2086
    timeout "${GPU_PROBE_TIMEOUT:-150}" "$PY" bench/gpu_nan_probe.py --data-dir .gpudata --out "$OUT/nan_probe.json" \
        ${GPU_PROBE_ARGS:-} > "$OUT/nan_probe.log" 2>&1
    say "bench/gpu_nan_probe.py exit $? (log: nan_probe.log, result: nan_probe.json)"
    tail -40 "$OUT/nan_probe.log"
    exit 0
fi

say "bench/gpu.py"
# GPU_BENCH_ARGS / GPU_BENCH_TIMEOUT: a shorter or partial run (e.g. "--only peak,train --rounds 2")
# shellcheck disable=SC2086
timeout "${GPU_BENCH_TIMEOUT:-220}" "$PY" bench/gpu.py --data-dir .gpudata --out "$OUT/gpu.json" \
    ${GPU_BENCH_ARGS:---rounds 3 --train-budget-s 120} > "$OUT/gpu.log" 2>&1
say "bench/gpu.py exit $? (log: gpu.log, result: gpu.json)"
grep -E "^(models|peak|train|icl|latency)|FAILED|^train round|^wrote" "$OUT/gpu.log" | tail -20

[ "${GPU_TESTS:-1}" = 1 ] || { say "done (CUDA tests skipped: GPU_TESTS=0)"; exit 0; }
say "CUDA tests"
timeout 75 "$PY" -m pytest -q -p no:cacheprovider -rA tests/test_cuda.py \
    "tests/test_icl_quant.py::test_4bit_and_8bit_on_cuda" > "$OUT/pytest_cuda.log" 2>&1
say "CUDA tests exit $? (log: pytest_cuda.log)"
tail -15 "$OUT/pytest_cuda.log"
say "done"
