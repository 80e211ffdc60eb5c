"""Optional experiment tracking: TensorBoard and MLflow (local file store), only when asked for.

``train.log_to: [tensorboard, mlflow]`` sends every finished method's per-epoch curves, final
metrics, costs and hyperparameters to these tools, under the run folder (``tensorboard/``, and
``mlflow.db``, a local SQLite store: ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``). The packages are optional: asking for one that is not installed is a one-line
config error before anything trains, never a crash after an hour of training. The RunResult
stays the source of truth; trackers receive a copy of what it records.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from peftlab.infra.errors import PeftlabError
from peftlab.infra.registry import Registry

if TYPE_CHECKING:  # annotations only: infra/ stands below the results it logs
    from peftlab.results import RunResult


class Tracker(Protocol):
    #: the import that must work for this tracker (what ``pip install`` is told)
    package: str

    def log(self, out: Path, experiment: str, result: RunResult) -> None: ...


TRACKERS: Registry[Tracker] = Registry("tracker")


def epoch_metrics(result: RunResult) -> list[tuple[int, dict[str, float]]]:
    """(epoch, {metric: value}) for every recorded epoch, skipping values never measured."""
    out = []
    for e in result.epochs:
        vals = {"train/loss": e.train_loss, "eval/loss": e.eval_loss, "eval/accuracy": e.accuracy,
                "eval/macro_f1": e.macro_f1}
        out.append((e.epoch, {k: float(v) for k, v in vals.items() if v is not None}))
    return out


def final_metrics(result: RunResult) -> dict[str, float]:
    """The comparison-table numbers of one row, as flat floats."""
    t, p = result.timing, result.params
    vals: dict[str, float | int | None] = {
        "final/accuracy": result.accuracy, "final/macro_f1": result.macro_f1,
        "params/trainable": p.trainable if p else None, "params/percent_trainable": p.percent_trainable if p else None,
        "cost/train_s": t.train_s if t else None, "cost/eval_s": t.eval_s if t else None,
        "cost/train_examples_per_s": t.train_examples_per_s if t else None,
        "cost/peak_memory_mb": result.peak_memory_bytes / 2**20 if result.peak_memory_bytes else None,
        "cost/adapter_mb": result.adapter_bytes / 2**20 if result.adapter_bytes else None,
    }
    return {k: float(v) for k, v in vals.items() if v is not None}


def flat_params(result: RunResult) -> dict[str, str]:
    """Hyperparameters as strings (both tools store parameters as text)."""
    params = {f"method.{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in result.method_params.items()}
    return params | {"task": result.task, "backbone": result.backbone, "seed": str(result.seed), "status": result.status}


class TensorBoard:
    package = "tensorboard"

    def log(self, out: Path, experiment: str, result: RunResult) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / "tensorboard" / result.name))
        try:
            for epoch, vals in epoch_metrics(result):
                for k, v in vals.items():
                    writer.add_scalar(k, v, epoch)
            for k, v in final_metrics(result).items():
                writer.add_scalar(k, v, 0)
            writer.add_text("params", json.dumps(flat_params(result), indent=1))
        finally:
            writer.close()


def mlflow_uri(out: Path) -> str:
    """A local SQLite store in the run folder (MLflow 3.10+ dropped plain-directory stores)."""
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


class MLflow:
    package = "mlflow"

    def log(self, out: Path, experiment: str, result: RunResult) -> None:
        import mlflow

        mlflow.set_tracking_uri(mlflow_uri(out))
        exp = mlflow.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else mlflow.create_experiment(
            experiment, artifact_location=(out / "mlartifacts").resolve().as_uri())
        with mlflow.start_run(experiment_id=exp_id, run_name=result.name):
            mlflow.log_params(flat_params(result))
            for epoch, vals in epoch_metrics(result):
                mlflow.log_metrics(vals, step=epoch)
            mlflow.log_metrics(final_metrics(result))
            mlflow.set_tags({"flags": " ".join(result.flags), "method": result.method})


TRACKERS.add("tensorboard", TensorBoard())
TRACKERS.add("mlflow", MLflow())


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def check_trackers(names: list[str]) -> None:
    """Refuse, before training, a tracker whose package is missing (one line, exit code 2)."""
    for name in names:
        tracker = TRACKERS.get(name)
        if not _importable(tracker.package):
            raise PeftlabError(f"config error: train.log_to: {name!r} asked for, but the {tracker.package!r} "
                               f"package is not installed (pip install {tracker.package}, or peftlab[tracking])")


def log_result(names: list[str], out: Path, experiment: str, result: RunResult) -> None:
    """Send one finished row to every asked-for tracker; a tracker's failure only warns."""
    for name in names:
        try:
            TRACKERS.get(name).log(out, experiment, result)
        except Exception as exc:  # the results are written already; logging is a convenience
            print(f"warning: {name} logging of {result.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def tracker_names(value: Any) -> list[str]:
    """Validate ``train.log_to`` (a name or a list of names) against the registry."""
    names = [value] if isinstance(value, str) else list(value or [])
    for n in names:
        if n not in TRACKERS:
            raise ValueError(TRACKERS.unknown_message(n))
    return names
