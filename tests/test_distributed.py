"""Data parallelism: ``accelerate launch --multi_gpu --num_processes 2 -m peftlab run CONFIG`` on CPU (gloo).

Two processes with batch_size 4 must train exactly what one process trains with batch_size 8
(the global batch): the same examples per step (the sampler cuts each global batch into
per-process pieces) and the same all-reduced mean gradient (equal pieces: 48 examples = 6 global
batches of 8; a short last batch is topped up by accelerate with repeated examples, documented in
the README). Dropout is off in the tiny model: each process draws its own masks, so with dropout
the runs agree only in distribution. Tolerance 1e-4: the all-reduce adds per-process gradients
in another float order than one process summing the whole batch.

Only rank 0 may touch the output folder: each process runs with an audit hook (a sitecustomize
on PYTHONPATH) that logs every open-for-writing, mkdir, rename, remove and rmtree under it; rank
1's log must be empty while rank 0's is not (so the hook demonstrably sees the writes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from peftlab.runners.batching import LengthGroupedBatches

from conftest import make_tokenizer, run_cli, tiny_config, tiny_rows

ROOT = Path(__file__).resolve().parents[1]

AUDIT = '''
import atexit, os, sys
_out, _log = os.environ.get("AUDIT_OUT"), os.environ.get("AUDIT_LOG")
_seen = []
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if not ((isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE)):
            return
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
        path = args[0]
    else:
        return
    if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(_out):
        _seen.append(f"{event} {os.fsdecode(path)}")
def _dump():
    with open(f"{_log}.rank{os.environ.get('RANK', 'launcher')}", "w") as f:
        f.write("\\n".join(_seen))
if _out and _log:
    sys.addaudithook(_hook)
    atexit.register(_dump)
'''


@pytest.mark.parametrize("n", [48, 45, 3])
def test_per_process_pieces_are_the_global_batches(n: int) -> None:
    """Pieces dealt round-robin to 2 processes rebuild the 1-process batches of twice the size."""
    lengths = [(i * 7) % 13 + 1 for i in range(n)]
    one = LengthGroupedBatches(lengths, 8, seed=3, processes=1)
    two = LengthGroupedBatches(lengths, 4, seed=3, processes=2)
    pieces = two.batches(1)
    assert len(pieces) == len(two)
    assert all(len(p) == 4 for p in pieces[:-1])
    rebuilt = [sum(pieces[i:i + 2], []) for i in range(0, len(pieces), 2)]
    full = [b for b in one.batches(1) if len(b) == 8]
    assert rebuilt == full + [b for b in one.batches(1) if len(b) < 8]  # a short global batch goes last
    assert -(-len(two) // 2) == len(one)  # accelerate's per-process length = the 1-process step count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    from transformers import AutoModelForSequenceClassification

    conf = tiny_config("bert")
    conf.hidden_dropout_prob = conf.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(conf).save_pretrained(str(root / "model"))
    make_tokenizer(root / "model", with_cls=True)
    for name, rows in (("train.csv", tiny_rows(48, 1)), ("eval.csv", tiny_rows(24, 2))):
        (root / name).write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(AUDIT)
    return root


TWO_METHODS = [{"method": "full", "lr": 1e-2}, {"method": "lora", "r": 4, "lr": 5e-2, "dropout": 0.0}]


def config(root: Path, out: str, batch_size: int, methods: list[dict] = TWO_METHODS) -> Path:
    raw = {
        "name": "ddp", "backbone": str(root / "model"), "baseline": False,
        "task": {"source": "csv", "train_file": str(root / "train.csv"), "eval_file": str(root / "eval.csv")},
        "methods": methods,
        "train": {"epochs": 6, "batch_size": batch_size, "max_length": 32, "device": "cpu", "num_threads": 1,
                  "checkpoint_every": 2, "warmup_ratio": 0.2},
        "output_dir": str(root / out),
    }
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def launch(root: Path, cfg: Path, out: Path, mode: tuple[str, ...] = ("--multi_gpu",)) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{root / 'site'}{os.pathsep}{ROOT}", "AUDIT_OUT": str(out),
           "AUDIT_LOG": str(root / "audit"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # --multi_gpu is accelerate's torchrun launcher; on a machine without CUDA each process runs on
    # the CPU with gloo (accelerate's --cpu with several processes needs mpirun instead)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "peftlab", "run", str(cfg), "--quiet"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def result(run: Path, name: str) -> dict:
    return json.loads((run / name / "results.json").read_text())


def adapter_tensors(run: Path, name: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted((run / name / "adapter").glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def two_equal_one(root: Path, out: str, mode: tuple[str, ...] = ("--multi_gpu",),
                  methods: list[dict] = TWO_METHODS) -> subprocess.CompletedProcess:
    """Launch 2 processes with batch 4 into ``root/out`` and run 1 process with batch 8 into
    ``root/one``; assert both trained the same (losses, predictions, saved tensors, 1e-4)."""
    done = launch(root, config(root, out, 4, methods), root / out, mode)
    assert done.returncode == 0, done.stderr[-3000:]
    single = run_cli("run", str(config(root, "one", 8, methods)), "--quiet")
    assert single.returncode == 0, single.stderr[-3000:]

    for name in (m["method"] for m in methods):
        a, b = result(root / out, name), result(root / "one", name)
        assert a["status"] == b["status"] == "ok"
        assert a["confusion_matrix"] == b["confusion_matrix"]
        for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
            assert ea["eval_loss"] == pytest.approx(eb["eval_loss"], abs=1e-4)
            assert ea["train_loss"] == pytest.approx(eb["train_loss"], abs=1e-4)
        assert "params_unchanged" not in a["flags"]
        assert isinstance(a["load_avg_start"], float)
        assert a["epochs"][0]["eval_loss"] != pytest.approx(a["epochs"][-1]["eval_loss"], abs=1e-3)  # it trained
        ta, tb = adapter_tensors(root / out, name), adapter_tensors(root / "one", name)
        assert ta.keys() == tb.keys() and ta
        for k in ta:
            assert ta[k].shape == tb[k].shape, k
            if k.endswith("attention.self.key.bias"):  # its exact gradient is 0 (softmax ignores a shift):
                continue  # only float noise, which Adam scales to lr-sized steps: not comparable
            torch.testing.assert_close(ta[k], tb[k], atol=1e-4, rtol=1e-4, msg=k)
    return done


def test_two_processes_equal_one_with_the_global_batch_and_only_rank0_writes(setup: Path) -> None:
    done = two_equal_one(setup, "two")
    ddp_out = setup / "two"
    rank0 = (setup / "audit.rank0").read_text().splitlines()
    rank1 = (setup / "audit.rank1").read_text().splitlines()
    assert any("results.json" in line for line in rank0) and any("adapter" in line for line in rank0)
    assert any("checkpoints" in line for line in rank0)
    assert rank1 == [], rank1[:5]
    assert not [p for p in ddp_out.rglob("*") if p.name.endswith(".tmp")]
    assert done.stdout.count("| full") == 1  # the comparison is printed once, by rank 0
