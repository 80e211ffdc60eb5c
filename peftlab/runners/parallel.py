"""``peftlab run CONFIG --parallel N``: the methods of one config spread over N worker processes.

The parent does what is shared once (validate, load the data for the baseline, write config.yaml,
decide what to resume), then keeps up to N workers busy, one method each; every worker is a fresh
``python -m peftlab.runners.parallel`` process that runs exactly the sequential code path for its
method (same seed, same data, same result file), so each result equals the sequential run's.
Workers write only their own method folder and a ``worker.log`` there; the parent alone writes
the comparison and the report, once, at the end.

A worker that dies without finishing its result (killed, out of memory, a crash below Python)
leaves ``status: incomplete`` behind; the parent turns it into ``failed`` with the exit code and
goes on with the others. Resources: slot i gets GPU ``i % n_gpus`` (CUDA_VISIBLE_DEVICES) when
GPUs are used, and on the CPU ``cores // N`` torch threads (unless the user set OMP_NUM_THREADS
or ``train.num_threads``), so N workers never oversubscribe the cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import peftlab
from peftlab.config import ExperimentConfig, load_config
from peftlab.infra.config_base import MethodParams
from peftlab.infra.errors import PeftlabError
from peftlab.results import RESULTS_FILE, RunResult, read_result
from peftlab.runners.progress import say
from peftlab.infra.threads import apply_threads, available_cores, decide_threads, warn_if_busy
from peftlab.estimate.plan import check_fits
from peftlab.report.compare import write_comparison
from peftlab.runners.checkpoint import clear_checkpoints
from peftlab.infra.distributed import world_size
from peftlab.runners.experiment import Encodings, preflight, run_methods
from peftlab.runners.output import prepare_output, write_run_report
from peftlab.runners.rows import BASELINE, base_result, baseline_result, finished_result
from peftlab.runners.seeds import single_seed
from peftlab.tasks import load_task

WORKER_LOG = "worker.log"


def worker_env(slot: int, workers: int, base: Mapping[str, str], gpus: list[str], cores: int,
               configured_threads: int | None) -> dict[str, str]:
    """The environment of the worker in ``slot`` (pure: the caller supplies machine facts).

    ``gpus``: the GPU ids this process may use (empty on the CPU); ``cores``: cores available.
    """
    env = dict(base)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    n, _ = decide_threads(configured_threads, base.get("OMP_NUM_THREADS"), cores, workers)
    env["OMP_NUM_THREADS"] = str(n)
    return env


def visible_gpus(cfg: ExperimentConfig) -> list[str]:
    """GPU ids the workers are spread over; none when the config keeps training on the CPU."""
    if cfg.train.device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in listed.split(",") if x.strip()] if listed else []
    return ids or [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class Job:
    params: MethodParams
    slot: int
    proc: subprocess.Popen[Any]
    log: IO[str]
    started: float


def run_parallel(cfg: ExperimentConfig, workers: int, quiet: bool = False, resume: Any = "auto",
                 command: list[str] | None = None) -> list[RunResult]:
    """Every method of ``cfg`` on up to ``workers`` processes at once; results in config order."""
    if world_size() > 1:
        raise PeftlabError("--parallel under accelerate launch/torchrun: use one or the other")
    if cfg.task.modality != "text":
        raise PeftlabError("--parallel: only text tasks for now (image methods share one feature cache); drop --parallel")
    if len(cfg.seed_list) > 1:
        raise PeftlabError("--parallel: not with several seeds yet; run each seed as its own run, or drop --parallel")

    cfg = single_seed(cfg)
    preflight(cfg)
    data = load_task(cfg.task, cfg.train.seed)
    if cfg.train.memory_check:
        check_fits(cfg, data.num_labels)
    out, reuse = prepare_output(cfg, resume, command)
    warn_if_busy()
    done: dict[str, RunResult] = {}
    if cfg.baseline:
        done[BASELINE] = baseline_result(cfg, data)
        done[BASELINE].write(out / BASELINE)
    todo: deque[MethodParams] = deque()
    for params in cfg.methods:
        kept = finished_result(out / params.label, params) if reuse else None
        if kept is not None:
            say(quiet, f"== {params.label}: finished in an earlier run, kept")
            done[params.label] = kept
            continue
        if not reuse:
            clear_checkpoints(out / params.label)
        todo.append(params)
    done.update(_run_workers(cfg, out, todo, workers, reuse, quiet, data))
    results = ([done[BASELINE]] if cfg.baseline else []) + [done[p.label] for p in cfg.methods]
    write_comparison(results, out)
    write_run_report(out, quiet)
    return results


def _run_workers(cfg: ExperimentConfig, out: Path, todo: deque[MethodParams], workers: int, reuse: bool,
                 quiet: bool, data: Any) -> dict[str, RunResult]:
    """Keep ``workers`` slots busy until ``todo`` is empty; each finished method's result."""
    gpus, cores = visible_gpus(cfg), available_cores()
    running: dict[int, Job] = {}
    results: dict[str, RunResult] = {}
    try:
        while todo or running:
            for slot in range(workers):
                if slot not in running and todo:
                    env = worker_env(slot, workers, os.environ, gpus, cores, cfg.train.num_threads)
                    running[slot] = _start(todo.popleft(), slot, out, reuse, env)
                    say(quiet, f"== {running[slot].params.label}: started on worker {slot} "
                               f"(log: {out / running[slot].params.label / WORKER_LOG})")
            time.sleep(0.2)
            for slot, job in list(running.items()):
                if job.proc.poll() is not None:
                    del running[slot]
                    job.log.close()
                    results[job.params.label] = _collect(job, cfg, out, data)
                    r = results[job.params.label]
                    say(quiet, f"== {job.params.label}: {r.status} in {time.perf_counter() - job.started:.0f} s"
                               + (f", accuracy {r.accuracy:.4f}" if r.accuracy is not None else "")
                               + (f" ({r.error})" if r.error else ""))
    finally:  # an interrupt or a parent error must not leave workers training on
        for job in running.values():
            job.proc.terminate()
            job.proc.wait()
            job.log.close()
    return results


def _start(params: MethodParams, slot: int, out: Path, reuse: bool, env: dict[str, str]) -> Job:
    mdir = out / params.label
    mdir.mkdir(parents=True, exist_ok=True)
    # the workers import this very peftlab, wherever the parent found it (a checkout, an install)
    root = str(Path(peftlab.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    log = open(mdir / WORKER_LOG, "w", encoding="utf-8")  # noqa: SIM115 (closed when the job ends)
    cmd = [sys.executable, "-m", "peftlab.runners.parallel", str(out), params.label, "reuse" if reuse else "fresh"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Job(params=params, slot=slot, proc=proc, log=log, started=time.perf_counter())


def _collect(job: Job, cfg: ExperimentConfig, out: Path, data: Any) -> RunResult:
    """The worker's result; a worker that died before writing one gives a ``failed`` result."""
    path = out / job.params.label / RESULTS_FILE
    try:
        result: RunResult | None = read_result(path)
    except PeftlabError:  # none written: the worker died before the method began
        result = None
    if result is None or result.status == "incomplete" or result.name != job.params.label:
        why = f"worker {job.slot} exited with code {job.proc.returncode} before the method ended; see {path.parent / WORKER_LOG}"
        result = base_result(cfg, job.params, data).model_copy(update={"status": "failed", "error": why})
        result.write(path.parent)
    return result


def worker_main(argv: list[str]) -> int:
    """One method of the run in ``out`` (its config.yaml), exactly as the sequential runner does it."""
    out, label, mode = Path(argv[0]), argv[1], argv[2]
    cfg = load_config(out / "config.yaml")
    params = [p for p in cfg.methods if p.label == label]
    if not params:
        raise PeftlabError(f"{out / 'config.yaml'} has no method {label!r}")
    one = cfg.model_copy(update={"methods": params, "baseline": False})
    apply_threads(one.train.num_threads)
    data = load_task(one.task, one.train.seed)
    results = run_methods(one, data, Encodings(one, data), out, mode == "reuse", quiet=True)
    return 0 if results[-1].status == "ok" else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        sys.exit(worker_main(sys.argv[1:]))
    except PeftlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
