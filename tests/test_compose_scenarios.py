"""The shipped composition scenarios: each config validates, its data splits are what they say,
and a scenario runs end to end on a tiny random BERT (the real ones train MiniLM: see README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from peftlab.compose import scenario_data as sd
from peftlab.compose.scenarios import SCENARIOS, load_scenario
from peftlab.infra.errors import PeftlabError
from method_table import _one_thread  # noqa: F401  (autouse: one intra-op thread)

CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/compose_*.yaml"))


def test_three_scenarios_shipped():
    assert {load_scenario(p).scenario for p in CONFIGS} == {"generalisation", "negation", "analogy"}
    assert {load_scenario(p).task for p in CONFIGS if "analogy" in p.stem} == {"bbcnews", "drugreview"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_scenario_plans(path):
    cfg = load_scenario(path)
    plan = SCENARIOS.get(cfg.scenario)(cfg)
    names = {m.name for m in plan.modules}
    assert all(len(m.train) > 0 and len(m.val) > 0 for m in plan.modules)
    assert len(plan.test) > 0 and len(plan.val) > 0
    from peftlab.compose.expr import linear_form

    for row in plan.rows:  # every row is a well-formed expression over the modules
        assert set(linear_form(row.expression, names, {"lambda": 0.5})) <= names
    if cfg.scenario == "generalisation":
        a, b = (np.bincount(m.train.labels, minlength=len(plan.labels)) for m in plan.modules[:2])
        assert a[0] / a.sum() > b[0] / b.sum() and a[-1] / a.sum() < b[-1] / b.sum()  # opposite skews
        assert a.sum() + b.sum() == len(plan.modules[2].train) == cfg.n_train


def test_scenario_data_functions():
    labels = np.repeat([0, 1, 2], 10)
    a, b = sd.skewed_halves(labels, 0.8, 0)
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(30))
    assert (labels[a] == 0).sum() == 8 and (labels[a] == 2).sum() == 2
    assert sd.flip_labels(np.array([0, 1, 2]), 3).tolist() == [2, 1, 0]
    s = sd.shuffle_task(["one two three four five"] * 40, 0)
    assert 0 < s.labels.sum() < 40
    assert all(sorted(t.split()) == sorted("one two three four five".split()) for t in s.texts)
    assert all((t != "one two three four five") or lab == 0 for t, lab in zip(s.texts, s.labels))
    lead, closing = sd.bbc_sections("Title\n\nFirst para.\n\nMiddle.\n\nLast words here.")
    assert (lead, closing) == ("Title First para.", "Last words here.")


def test_bad_scenario_config(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("scenario: analogy\nskew: 0.3\n")
    with pytest.raises(PeftlabError, match="skew"):
        load_scenario(p)
    p.write_text("scenario: negation\nlora: {r: 0}\n")
    with pytest.raises(PeftlabError, match="scenario config error"):
        load_scenario(p)


def test_validate_checks_scenario_configs_as_such(tmp_path):
    """``peftlab validate`` on a scenario config: one ok line, or one error line and exit 2."""
    from conftest import run_cli

    for path in CONFIGS:
        proc = run_cli("validate", str(path))
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert proc.stdout.startswith(f"ok: {path} (") and proc.stdout.count("\n") == 1 and "scenario" in proc.stdout
    bad = tmp_path / "s.yaml"
    negation = str(next(p for p in CONFIGS if p.stem == "compose_negation"))
    for text, args, why in [("scenario: analogy\nskew: 0.3\n", [], "skew"),
                            ("scenario: negation\nsweep: lambda=1:0:0.5\n", [], "sweep"),
                            ("scenario: analogy\ntask: drugreview\ndomain: [No such condition]\n", [], "empty split"),
                            (None, [negation, "n_trian=50"], "n_trian: unknown key")]:
        if text is not None:
            bad.write_text(text)
        proc = run_cli("validate", *(args or [str(bad)]))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and why in proc.stderr, proc.stderr


def test_generalisation_runs_end_to_end(tiny_bert, tmp_path):
    from peftlab.compose.scenario_run import run_scenario

    cfg = load_scenario(CONFIGS[[p.stem for p in CONFIGS].index("compose_generalisation")], [
        f"backbone={tiny_bert}", "n_train=24", "n_test=12", "val_fraction=0.05", "train.epochs=1",
        "train.max_length=16", "sweep=lambda=0,1", "n_val=12", f"output_dir={tmp_path}", "lora.r=2",
    ])
    md = run_scenario(cfg, quiet=True)
    assert "trained on all" in md and "mix (weight)" in md
    rows = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "rows").glob("*/results.json")}
    assert len(rows) == 6 and all(r["n_eval"] == 12 for r in rows.values())
    alone = rows["part_a_alone"]["accuracy"]
    mix = rows["mix__parameter"]
    # lambda=0 composes part_a alone: if it was chosen, the test score must be part_a's exactly
    if mix["method_params"]["variables"]["lambda"] == 0:
        assert mix["accuracy"] == alone
    assert (tmp_path / "comparison.md").is_file() and (tmp_path / "sweeps" / "mix__weight" / "sweep.png").is_file()


def test_sweep_grid_and_builtin_validation_is_held_out_of_train():
    from peftlab.compose.sweep import load_validation, parse_sweep

    assert parse_sweep("lambda=0:1:0.25") == ("lambda", [0.0, 0.25, 0.5, 0.75, 1.0])
    assert parse_sweep("w=0.1,2") == ("w", [0.1, 2.0])
    for bad in ("lambda=1:0:0.1", "lambda=0:1:0", "=0:1:1", "lambda=a,b"):
        with pytest.raises(PeftlabError, match="--sweep"):
            parse_sweep(bad)
    val = load_validation("drugreview")  # 20% of the 600 training reviews, never the 379 test ones
    assert len(val.split) == 120 and val.labels == ["negative", "neutral", "positive"]
    from peftlab.tasks.builtin import drugreview

    train, test, _ = drugreview()
    assert set(val.split.texts) <= set(train.text) and not set(val.split.texts) & set(test.text)
    with pytest.raises(PeftlabError, match="not a config file"):
        load_validation("nosuchtask")
