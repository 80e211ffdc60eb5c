"""The launcher a run was started with is recorded and shown in the report's re-run line; a
method's failure is recorded by every process but printed by rank 0 alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from peftlab.config import validate_raw
from peftlab.infra.errors import PeftlabError
from peftlab.infra.launcher import launch_prefix, launcher_record
from peftlab.report.collect import load_run_dir
from peftlab.runners.output import prepare_output
from peftlab.runners.rows import guarded
from peftlab.tasks.base import Split, TaskData

ACCELERATE_DDP = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                  "ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_DYNAMO_BACKEND": "NO", "HOME": "/root",
                  "MASTER_PORT": "29500"}


def test_no_launcher_no_record() -> None:
    assert launcher_record({"HOME": "/root", "PATH": "/bin"}) is None


@pytest.mark.parametrize("env, prefix", [
    (ACCELERATE_DDP, "accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16"),
    ({**ACCELERATE_DDP, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
      "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"},
     "accelerate launch --use_fsdp --num_processes 2 --mixed_precision bf16 --fsdp_version 2 "
     "--fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP"),
    ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0"}, "torchrun --nnodes 2 --nproc_per_node 4"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "torchrun --nproc_per_node 2"),
])
def test_the_launch_prefix_is_rebuilt_from_the_launchers_environment(env: dict, prefix: str) -> None:
    record = launcher_record(env)
    assert record is not None and record["world_size"] == int(env["WORLD_SIZE"])
    assert "HOME" not in record["env"] and record["env"]["WORLD_SIZE"] == env["WORLD_SIZE"]
    assert launch_prefix(record) == prefix


def test_command_json_records_the_launcher_and_the_report_reruns_with_it(tmp_path: Path, monkeypatch) -> None:
    """prepare_output writes the record (a one-process launch: no process group to join), and the
    report's reproducing line and 'originally started as' line carry the launcher's prefix."""
    for k, v in {**ACCELERATE_DDP, "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    cfg = validate_raw({"name": "l", "backbone": "minilm-l6", "methods": [{"method": "full"}],
                        "task": {"source": "csv", "train_file": "a.csv", "eval_file": "b.csv"},
                        "output_dir": str(tmp_path / "run")})
    out, _ = prepare_output(cfg, "fresh", ["peftlab", "run", "x.yaml"])
    record = json.loads((out / "command.json").read_text())
    assert record["launcher"]["env"]["ACCELERATE_MIXED_PRECISION"] == "bf16"
    (out / "full").mkdir()
    (out / "full" / "results.json").write_text("{}")
    run, _ = load_run_dir(out)
    prefix = "accelerate launch --multi_gpu --num_processes 1 --mixed_precision bf16"
    assert run.command == f"{prefix} -m peftlab run {out / 'config.yaml'}"
    assert run.original is not None and run.original[0] == f"{prefix} -m peftlab run x.yaml"
    for k in ACCELERATE_DDP:
        monkeypatch.delenv(k, raising=False)
    out, _ = prepare_output(cfg, "fresh", ["peftlab", "run", "x.yaml"])
    assert "launcher" not in json.loads((out / "command.json").read_text())
    assert load_run_dir(out)[0].command == f"peftlab run {out / 'config.yaml'}"


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_failure_is_recorded_everywhere_and_printed_by_rank0_only(rank: str, tmp_path: Path, monkeypatch,
                                                                    capsys) -> None:
    monkeypatch.setenv("RANK", rank)
    cfg = validate_raw({"name": "g", "backbone": "minilm-l6", "methods": [{"method": "full"}],
                        "task": {"source": "csv", "train_file": "a.csv", "eval_file": "b.csv"},
                        "output_dir": str(tmp_path)})
    split = Split(texts=["a", "b"], labels=np.array([0, 1]))
    data = TaskData(name="t", label_names=["x", "y"], train=split, eval=Split(texts=["c"], labels=np.array([1])))

    def fail(base, mdir):
        raise PeftlabError("boom")

    result = guarded(cfg, cfg.methods[0], data, tmp_path, fail)
    assert result.status == "failed" and "boom" in (result.error or "")
    printed = "error: method full failed: boom" in capsys.readouterr().err
    assert printed == (rank == "0")
    assert (tmp_path / "full" / "results.json").is_file() == (rank == "0")
