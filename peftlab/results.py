"""RunResult: the one schema every runner writes (fine-tuning, in-context, zero-shot)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from peftlab.errors import PeftlabError, first_line
from peftlab.io import atomic_write_json, read_json

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float | None = None
    eval_loss: float | None = None
    accuracy: float | None = None
    macro_f1: float | None = None


class ParamCounts(BaseModel):
    trainable: int
    total: int
    percent_trainable: float
    derived_trainable: int | None = None
    derived_total: int | None = None
    #: True/False when a closed form exists for this architecture, None otherwise
    agree: bool | None = None


class Timing(BaseModel):
    wall_s: float
    train_s: float = 0.0
    eval_s: float = 0.0
    train_examples_per_s: float | None = None
    eval_examples_per_s: float | None = None


class RunResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    #: "incomplete" is written when a method starts and replaced when it ends: a killed run never looks done
    status: Literal["ok", "failed", "incomplete"] = "ok"
    error: str | None = None
    name: str
    method: str
    method_params: dict[str, Any] = Field(default_factory=dict)
    task: str
    backbone: str
    seed: int
    labels: list[str] = Field(default_factory=list)
    n_train: int = 0
    n_eval: int = 0
    epochs: list[EpochRecord] = Field(default_factory=list)
    accuracy: float | None = None
    macro_f1: float | None = None
    per_class: dict[str, dict[str, float]] = Field(default_factory=dict)
    confusion_matrix: list[list[int]] = Field(default_factory=list)
    params: ParamCounts | None = None
    timing: Timing | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None  # "rss" (CPU process) or "cuda_max_allocated"
    adapter_bytes: int | None = None
    adapter_path: str | None = None
    #: health flags: "collapsed", "nan_loss", "params_unchanged", "params_mismatch"
    flags: list[str] = Field(default_factory=list)
    environment: dict[str, Any] = Field(default_factory=dict)
    #: method-specific diagnostics (zero-shot: accuracy per template, worst class, template search);
    #: ``report_lines`` (Markdown lines) are printed under the comparison table
    details: dict[str, Any] = Field(default_factory=dict)
    #: rows run over several seeds (in-context demonstrations): accuracy/macro_f1 are the means,
    #: these the sample standard deviations and the per-seed values
    seeds: list[int] = Field(default_factory=list)
    accuracy_std: float | None = None
    macro_f1_std: float | None = None
    seed_accuracy: list[float] = Field(default_factory=list)
    seed_macro_f1: list[float] = Field(default_factory=list)
    #: the loss weight per label the training used (train.class_weight: balanced); None: unweighted
    class_weights: dict[str, float] | None = None
    #: the metric "best" is judged by in the report (train.select_metric): accuracy or macro_f1
    select_metric: Literal["accuracy", "macro_f1"] = "accuracy"
    #: what the row computed in ("fp32", "bf16", "fp16" autocast) and why: "asked for", "CUDA",
    #: the CPU probe's two figures, PEFTLAB_CPU_PRECISION, or the method's reason to stay fp32
    precision: str | None = None
    precision_reason: str | None = None
    #: the machine's 1-minute load average when the run started; above the core count, other jobs
    #: competed for the CPU and the timings are slower than the method alone would be
    load_avg_start: float | None = None

    def write(self, directory: Path) -> None:
        atomic_write_json(directory / RESULTS_FILE, self.model_dump(mode="json"))


def read_result(path: Path) -> RunResult:
    data = read_json(path)
    if isinstance(data, dict) and int(data.get("schema_version", 0)) > SCHEMA_VERSION:
        raise PeftlabError(f"{path}: written by a newer peftlab (schema {data['schema_version']})")
    try:
        return RunResult.model_validate(data)
    except ValueError as exc:
        raise PeftlabError(f"{path}: not a peftlab result ({first_line(exc)})") from None


def git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware, so every number says where it came from."""
    import peft
    import torch
    import transformers

    import peftlab
    from peftlab.threads import available_cores

    return {
        "peftlab": peftlab.__version__,
        "git": git_hash(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "cores": available_cores(),
        "platform": platform.platform(),
    }
