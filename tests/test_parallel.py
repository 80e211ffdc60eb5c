"""``peftlab run CONFIG --parallel 2``: methods on worker processes, results equal to a sequential run.

One sequential run (in process) and one ``--parallel 2`` run of the same two-method config must
give the same numbers, every float of them; re-running keeps the finished methods (no worker
starts); a worker killed at start-up (a sitecustomize that exits the process whose arguments name
the method) leaves that method ``failed`` while the other finishes, and the command exits 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from peftlab.runners.parallel import WORKER_LOG, worker_env

METRIC_KEYS = ("accuracy", "macro_f1", "per_class", "confusion_matrix", "epochs", "flags", "params", "status")

CRASH = """
import os, sys
if os.environ.get("CRASH_METHOD") in sys.argv[1:]:  # a worker's arguments: run folder, method, mode
    os._exit(3)
"""


def write_config(tmp_path: Path, tiny_bert: str, tiny_csv, out: str, crash: bool = False) -> Path:
    train_file, eval_file = tiny_csv
    raw = {
        "name": "par", "backbone": tiny_bert,
        "task": {"source": "csv", "train_file": str(train_file), "eval_file": str(eval_file)},
        "methods": [{"method": "full", "lr": 3e-3}, {"method": "lora", "r": 4, "lr": 1e-2}]
                   + ([{"method": "lora", "name": "doomed"}] if crash else []),
        "train": {"epochs": 2, "batch_size": 8, "max_length": 32, "device": "cpu", "num_threads": 1},
        "output_dir": str(tmp_path / out),
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def metrics(run: Path, name: str) -> dict:
    r = json.loads((run / name / "results.json").read_text())
    return {k: r[k] for k in METRIC_KEYS}


def test_parallel_equals_sequential_resumes_and_survives_a_dead_worker(tmp_path, tiny_bert, tiny_csv) -> None:
    seq = run_cli("run", str(write_config(tmp_path, tiny_bert, tiny_csv, "seq")), "--quiet")
    assert seq.returncode == 0, seq.stderr[-2000:]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASH)
    cfg = write_config(tmp_path, tiny_bert, tiny_csv, "par", crash=True)
    env = {"PYTHONPATH": str(site), "CRASH_METHOD": "doomed"}
    par = run_cli("run", str(cfg), "--parallel", "2", env=env)
    assert par.returncode == 1  # one method failed
    out = tmp_path / "par"
    for name in ("full", "lora"):
        assert metrics(out, name) == metrics(tmp_path / "seq", name)
        assert (out / name / WORKER_LOG).is_file()
    doomed = json.loads((out / "doomed" / "results.json").read_text())
    assert doomed["status"] == "failed" and "exited with code 3" in doomed["error"]
    assert par.stderr.count("started on worker") == 3
    table = (out / "comparison.md").read_text()
    assert "| full" in table and "| lora" in table and "| doomed" in table
    newest_result = max((out / n / "results.json").stat().st_mtime_ns for n in ("full", "lora", "doomed"))
    assert (out / "comparison.md").stat().st_mtime_ns >= newest_result  # written by the parent, at the end

    again = run_cli("run", str(cfg), "--parallel", "2", env=env)  # finished methods kept, the failed one retried
    assert again.returncode == 1
    assert again.stderr.count("finished in an earlier run, kept") == 2 and again.stderr.count("started on worker") == 1
    assert metrics(out, "lora") == metrics(tmp_path / "seq", "lora")


@pytest.mark.parametrize(("slot", "gpus", "omp", "expected_gpu", "expected_threads"), [
    (0, ["0", "1"], None, "0", "4"),
    (3, ["0", "1"], None, "1", "4"),  # worker i gets GPU i % n_gpus
    (2, ["5", "7", "9"], None, "9", "4"),  # ids from the parent's CUDA_VISIBLE_DEVICES
    (1, [], None, None, "4"),  # CPU: cores // workers threads
    (1, [], "3", None, "3"),  # the user's OMP_NUM_THREADS is kept
])
def test_worker_env(slot, gpus, omp, expected_gpu, expected_threads) -> None:
    base = {"PATH": "/bin", **({"OMP_NUM_THREADS": omp} if omp else {})}
    env = worker_env(slot, 2, base, gpus, cores=8, configured_threads=None)
    assert env.get("CUDA_VISIBLE_DEVICES") == expected_gpu
    assert env["OMP_NUM_THREADS"] == expected_threads
    assert env["PATH"] == "/bin"


def test_parallel_needs_a_positive_worker_count(tmp_path) -> None:
    done = run_cli("run", str(tmp_path / "any.yaml"), "--parallel", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --parallel 0: give the number of worker processes, 1 or more"]
