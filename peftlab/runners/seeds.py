"""Several seeds: each seed is a complete single-seed run in ``output_dir/seed-N``.

Every seed folder holds its own config.yaml (the experiment with ``train.seed: N``), results,
adapters and comparison, so ``peftlab predict RUN/seed-1/lora`` and ``peftlab report RUN/seed-1``
work as for any run; the top-level comparison folds them into mean ± std
(:mod:`peftlab.report.seeds`). The data split and subsample stay those of the experiment's
``train.seed`` for every seed: only training randomness (new weights, data order, dropout) varies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peftlab.config import ExperimentConfig, dump_config
from peftlab.infra.io import atomic_write_text
from peftlab.report.compare import write_comparison
from peftlab.report.seeds import seed_dir
from peftlab.results import RunResult
from peftlab.infra.distributed import is_main

__all__ = ["run_seeds", "seed_config", "seed_dir", "single_seed"]


def seed_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The experiment as a single-seed run of ``seed`` writing into its seed folder."""
    return cfg.model_copy(update={"seeds": None, "train": cfg.train.model_copy(update={"seed": seed}),
                                  "output_dir": str(seed_dir(Path(cfg.output_dir), seed))})


def single_seed(cfg: ExperimentConfig) -> ExperimentConfig:
    """``seeds: [N]`` is the plain single-run layout with ``train.seed: N``."""
    if cfg.seeds and len(cfg.seeds) == 1:
        return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": cfg.seeds[0]})})
    return cfg


def run_seeds(cfg: ExperimentConfig, out: Path,
              run_methods: Callable[[ExperimentConfig, Path], list[RunResult]]) -> list[RunResult]:
    """``run_methods(seed_cfg, seed_folder)`` once per seed; every result of every seed, in order."""
    results: list[RunResult] = []
    for seed in cfg.seed_list:
        scfg, sout = seed_config(cfg, seed), seed_dir(out, seed)
        if is_main():  # under accelerate launch only rank 0 writes
            sout.mkdir(parents=True, exist_ok=True)
            atomic_write_text(sout / "config.yaml", dump_config(scfg))
        seed_results = run_methods(scfg, sout)
        if is_main():
            write_comparison(seed_results, sout)
        results += seed_results
    return results
