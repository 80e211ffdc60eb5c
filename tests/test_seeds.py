"""Several seeds: one run per seed and method, mean ± std in the comparison, n.s. within the spread."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from peftlab.config import validate_raw
from peftlab.infra.errors import PeftlabError
from peftlab.report.seeds import (BELOW, BEST, NOT_SIGNIFICANT, mean_std, summarise, summary_csv, summary_markdown,
                                  versus_best)
from peftlab.results import RunResult
from peftlab.runners.experiment import run_experiment


def result(name: str, seed: int, acc: float, status: str = "ok") -> RunResult:
    return RunResult(name=name, method=name, task="t", backbone="b", seed=seed, accuracy=acc, macro_f1=acc / 2,
                     status=status)


def test_mean_std_is_the_sample_statistic():
    mean, std = mean_std([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2)
    assert mean_std([0.3]) == (0.3, 0.0)


def test_differences_within_the_spread_are_not_significant():
    rows = ([result("a", s, v) for s, v in enumerate([0.80, 0.82, 0.84])]     # 0.82 ± 0.02
            + [result("b", s, v) for s, v in enumerate([0.78, 0.81, 0.84])]   # 0.81 ± 0.03: overlaps a
            + [result("c", s, v) for s, v in enumerate([0.60, 0.61, 0.62])]   # 0.61 ± 0.01: far below
            + [result("d", 0, 0.9, "failed")])
    sums = {s.name: s for s in summarise(rows)}
    assert sums["a"].acc == pytest.approx((0.82, 0.02)) and sums["a"].seeds == [0, 1, 2]
    assert sums["d"].acc is None and sums["d"].failed == [0]
    assert versus_best(list(sums.values())) == {"a": BEST, "b": NOT_SIGNIFICANT, "c": BELOW}


def test_forgetting_is_averaged_only_over_seeds_that_all_measured_it():
    rows = [result("a", s, 0.8) for s in range(3)] + [result("b", s, 0.7) for s in range(2)]
    for r, cka in zip(rows[:3], [0.2, 0.4, 0.6]):
        r.details["drift"] = {"cka": cka}
        r.details["lm_loss"] = {"base": 3.0, "adapted": 3.0 + cka}
    rows[3].details["drift"] = {"cka": 0.9}  # b's seed 1 did not measure it
    sums = {s.name: s for s in summarise(rows)}
    assert sums["a"].cka_stat == pytest.approx((0.4, 0.2)) and sums["a"].lm_delta_stat == pytest.approx((0.4, 0.2))
    assert sums["b"].cka_stat is None and sums["b"].lm_delta_stat is None
    csv_rows = {r["method"]: r for r in csv.DictReader(summary_csv(rows).splitlines())}
    assert csv_rows["a"]["drift_cka_mean"] == "0.4000" and csv_rows["a"]["lm_loss_delta_mean"] == "+0.4000"
    assert csv_rows["b"]["drift_cka_mean"] == "" and csv_rows["b"]["drift_cka_std"] == ""
    md = "\n".join(summary_markdown(rows))
    assert "| CKA to base | LM loss Δ |" in md and "| 0.400 ± 0.200 | +0.400 ± 0.200 |" in md
    assert md.count("| - | - |") == 1  # b


def test_the_majority_baseline_is_never_the_best_row():
    """A task where every method collapsed below the majority class: the baseline is judged, not crowned."""
    rows = ([result("majority_class", s, 0.65) for s in range(3)]
            + [result("lora", s, v) for s, v in enumerate([0.60, 0.62, 0.64])])
    assert versus_best(summarise(rows)) == {"lora": BEST, "majority_class": BELOW}


def test_duplicate_seeds_refused(tiny_bert, tmp_path):
    raw = {"backbone": tiny_bert, "task": {"source": "csv", "train_file": "x.csv"}, "methods": ["full"],
           "seeds": [0, 1, 1]}
    with pytest.raises(PeftlabError, match="seeds: has duplicates"):
        validate_raw(raw)


@pytest.fixture(scope="module")
def seeded_run(tiny_bert, tmp_path_factory) -> Path:
    from conftest import write_tiny_csvs

    root = tmp_path_factory.mktemp("seeds")
    files = write_tiny_csvs(root, 36, 18)
    raw = {"backbone": tiny_bert, "seeds": [0, 1, 2],
           "task": {"source": "csv", "train_file": str(files[0]), "eval_file": str(files[1])},
           "methods": [{"method": "lora", "r": 2, "lr": 1e-2}, {"method": "linear_probe", "lr": 1e-2}],
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False},
           "output_dir": str(root / "run")}
    run_experiment(validate_raw(raw), quiet=True)
    return root / "run"


def test_each_seed_is_a_complete_run(seeded_run):
    for seed in (0, 1, 2):
        sdir = seeded_run / f"seed-{seed}"
        assert "seed: %d" % seed in (sdir / "config.yaml").read_text()
        for name in ("majority_class", "lora", "linear_probe"):
            assert json.loads((sdir / name / "results.json").read_text())["seed"] == seed
        assert (sdir / "lora" / "adapter").is_dir() and (sdir / "comparison.md").is_file()
    # tiny data may tie on accuracy; the seeds' training runs themselves must differ
    losses = [json.loads((seeded_run / f"seed-{s}" / "lora" / "results.json").read_text())["epochs"][0]["train_loss"]
              for s in (0, 1, 2)]
    assert len(set(losses)) == 3


def test_comparison_shows_mean_and_std(seeded_run):
    rows = {r["method"]: r for r in csv.DictReader((seeded_run / "comparison.csv").open())}
    accs = [json.loads((seeded_run / f"seed-{s}" / "lora" / "results.json").read_text())["accuracy"] for s in (0, 1, 2)]
    mean, std = mean_std(accs)
    assert float(rows["lora"]["accuracy_mean"]) == pytest.approx(mean, abs=1e-4)
    assert float(rows["lora"]["accuracy_std"]) == pytest.approx(std, abs=1e-4)
    assert rows["lora"]["seeds"] == "0 1 2" and rows["majority_class"]["accuracy_std"] == "0.0000"
    assert {r["vs_best"] for r in rows.values()} & {BEST}
    md = (seeded_run / "comparison.md").read_text()
    assert f"{mean:.4f} ± {std:.4f}" in md and "lora (seed 2)" in md and "seeds 0, 1, 2" in md


def test_paired_verdict_beside_the_spread_test(seeded_run):
    """Every seed's rows leave predictions; the summary shows the Wilson interval of the mean and a
    paired verdict over all seeds beside the spread test; each seed's comparison judges its runs."""
    from peftlab.report.paired import BEST, wilson_interval

    for seed in (0, 1, 2):
        for name in ("majority_class", "lora", "linear_probe"):
            assert (seeded_run / f"seed-{seed}" / name / "predictions.jsonl").is_file()
        seed_rows = list(csv.DictReader((seeded_run / f"seed-{seed}" / "comparison.csv").open()))
        assert [r["vs_best"] for r in seed_rows].count(BEST) == 1
    rows = {r["method"]: r for r in csv.DictReader((seeded_run / "comparison.csv").open())}
    assert [r["vs_best_paired"] for r in rows.values()].count(BEST) == 1
    assert all(r["vs_best_paired"] in ("best", "better", "worse", "not distinguishable") for r in rows.values())
    assert rows["majority_class"]["vs_best_paired"] != BEST and rows["lora"]["vs_best"]  # the spread test stays
    lo, _ = wilson_interval(float(rows["lora"]["accuracy_mean"]) * 18, 18)
    assert float(rows["lora"]["accuracy_ci_low"]) == pytest.approx(lo, abs=1e-3)
    md = (seeded_run / "comparison.md").read_text()
    assert "vs best (paired, accuracy)" in md and "accuracy 95% CI" in md
    # calibration pooled over the three seeds' probabilities
    from peftlab.report.calibration import calibration_of
    from peftlab.results import Predictions, read_predictions

    pooled = calibration_of(Predictions.pooled([read_predictions(seeded_run / f"seed-{s}" / "lora" / "predictions.jsonl")
                                                for s in (0, 1, 2)]))
    assert pooled.n == 3 * 18 and float(rows["lora"]["ece"]) == pytest.approx(pooled.ece, abs=1e-4)
    assert float(rows["lora"]["nll"]) == pytest.approx(pooled.nll, abs=1e-4) and rows["lora"]["ece_adaptive"]


def test_report_renders_seeds(seeded_run):
    md = (seeded_run / "report.md").read_text()
    html = (seeded_run / "report.html").read_text()
    assert "Mean ± std over seeds" in md and "lora (seed 1)" in md
    assert "Mean ± std over seeds" in html and "lora (seed 2)" in html
    rows = {r["method"]: r for r in csv.DictReader((seeded_run / "comparison.csv").open())}
    ckas = [json.loads((seeded_run / f"seed-{s}" / "lora" / "results.json").read_text())["details"]["drift"]["cka"]
            for s in (0, 1, 2)]
    assert float(rows["lora"]["drift_cka_mean"]) == pytest.approx(mean_std(ckas)[0], abs=1e-4)
    assert "<th>CKA to base</th>" in html


def test_single_seed_list_keeps_the_flat_layout(tiny_bert, tiny_csv, tmp_path):
    train, evalf = tiny_csv
    raw = {"backbone": tiny_bert, "seeds": [7], "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "linear_probe", "epochs": 1}],
           "train": {"epochs": 1, "max_length": 32, "device": "cpu", "checkpoints": False}, "output_dir": str(tmp_path / "r")}
    run_experiment(validate_raw(raw), quiet=True)
    assert json.loads((tmp_path / "r" / "linear_probe" / "results.json").read_text())["seed"] == 7
    assert not list((tmp_path / "r").glob("seed-*"))


def test_shipped_fair_config_validates():
    from peftlab.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / "drugreview_fair.yaml")
    assert cfg.seed_list == [0, 1, 2] and cfg.search is not None and cfg.search.lr == "auto"


@pytest.mark.parametrize("extra, field", [({"seeds": [0, 1]}, "seeds"), ({"search": {"lr": "auto"}}, "search")])
def test_image_tasks_refuse_seeds_and_search_rather_than_ignore_them(extra, field):
    raw = {"backbone": "efficientnet-lite0", "task": {"source": "fashion_mnist"}, "methods": ["linear_probe"], **extra}
    with pytest.raises(PeftlabError, match=rf"^config error: {field}: .*text tasks only"):
        validate_raw(raw)
