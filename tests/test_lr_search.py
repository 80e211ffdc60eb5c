"""Learning-rate search: picks the known best value, never touches the eval split, is recorded."""

from __future__ import annotations

import json
import math

import pytest

from peftlab.config import SearchConfig, validate_raw
from peftlab.infra.errors import PeftlabError
from peftlab.methods.lora import LoraParams
from peftlab.results import EpochRecord
from peftlab.runners import experiment as exp
from peftlab.runners.batching import Features
from peftlab.runners.lr_search import Trial, auto_grid, best_lr, holdout, lr_grid, search_lr, trial_epochs


def test_auto_grid_is_log_spaced_around_the_method_default():
    assert lr_grid(SearchConfig(), LoraParams()) == auto_grid(1e-3) == [1e-4, 0.000316, 1e-3, 0.00316, 1e-2]
    assert lr_grid(SearchConfig(lr=[1e-3, 1e-2]), LoraParams()) == [1e-3, 1e-2]


def test_holdout_and_budget():
    tr, val = holdout(50, 0.2, seed=3)
    assert len(val) == 10 and len(tr) == 40 and not set(tr) & set(val)
    assert trial_epochs(40, 8, 10) == (40, 2)  # 5 batches per epoch: 2 epochs = 10 steps
    assert trial_epochs(400, 8, 10) == (80, 1)  # a larger split is cut to the budget
    with pytest.raises(PeftlabError, match="search.val_fraction"):
        holdout(1, 0.5, 0)


def test_search_picks_the_known_best_without_training():
    """A fake trainer whose held-out loss is minimal at lr = 1e-3: the search must pick 1e-3."""
    items = [{"input_ids": [1, 2], "labels": i % 2} for i in range(20)]
    seen = []

    def trial(params, tr, va):
        seen.append((params.lr, len(tr), len(va)))
        return None if params.lr > 0.05 else EpochRecord(epoch=1, eval_loss=(math.log10(params.lr) + 3) ** 2 + 0.1)

    rec = search_lr(LoraParams(), SearchConfig(lr=[1e-5, 1e-4, 1e-3, 1e-2, 1.0], budget_steps=4),
                    Features(items), 0, 4, trial)
    assert rec["chosen"] == 1e-3 and rec["trials"][-1]["score"] == math.inf
    assert [s[0] for s in seen] == [1e-5, 1e-4, 1e-3, 1e-2, 1.0] and {s[1:] for s in seen} == {(16, 4)}
    with pytest.raises(PeftlabError, match="every trial diverged"):
        best_lr([Trial(lr=1.0, score=math.inf, eval_loss=None, accuracy=None, steps=1)])


def test_search_in_a_run_picks_the_best_and_never_touches_eval(tiny_bert, tmp_path, monkeypatch):
    """full fine-tuning on the tiny task: 1e-6 barely moves, 10 blows up, 1e-2 learns; the eval
    features reach training only in the final run, never in a trial."""
    from conftest import write_tiny_csvs

    train, evalf = write_tiny_csvs(tmp_path, 64, 12)
    real_train, calls = exp._train, []

    def spy(method, model, params, spec, cfg, train_f, eval_f, *args, **kwargs):
        calls.append((params.lr, train_f, eval_f))
        return real_train(method, model, params, spec, cfg, train_f, eval_f, *args, **kwargs)

    monkeypatch.setattr(exp, "_train", spy)
    raw = {"backbone": tiny_bert, "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "full", "lr": 1e-6}], "output_dir": str(tmp_path / "o"),
           "search": {"lr": [1e-6, 1e-2, 10.0], "budget_steps": 48, "val_fraction": 0.25},
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False,
                     "num_threads": 1}}
    (probe,) = [r for r in exp.run_experiment(validate_raw(raw), quiet=True) if r.method == "full"]
    s = probe.details["lr_search"]
    assert s["chosen"] == 1e-2 and [t["lr"] for t in s["trials"]] == [1e-6, 1e-2, 10.0]
    scores = [t["score"] for t in s["trials"]]
    assert scores[1] < 0.9 * min(scores[0], scores[2]) and s["n_val"] == 16 and s["budget_steps"] == 48
    *trials, final = calls
    assert final[0] == 1e-2 and len(trials) == 3  # the full run used the chosen value
    train_ids = {id(x) for x in final[1].items}
    for _, tr, va in trials:
        assert va is not final[2] and {id(x) for x in tr.items + va.items} <= train_ids  # training data only
        assert not {id(x) for x in tr.items} & {id(x) for x in va.items}
    stored = json.loads((tmp_path / "o" / "full" / "results.json").read_text())
    assert stored["details"]["lr_search"]["chosen"] == 1e-2 and stored["method_params"]["lr"] == 1e-6
    assert "lr 0.01 from [1e-06, 0.01, 10]" in (tmp_path / "o" / "comparison.md").read_text()
    assert "chosen by a search" in (tmp_path / "o" / "report.md").read_text()


def test_search_method_alone_gives_the_search_of_a_run_and_writes_nothing(tiny_bert, tmp_path):
    """``search_method`` (bench/method_defaults.py's entry point) is the run's own search, without the run."""
    from conftest import write_tiny_csvs

    from peftlab.tasks import load_task

    train, evalf = write_tiny_csvs(tmp_path, 48, 12)
    raw = {"backbone": tiny_bert, "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "full", "lr": 1e-6}], "output_dir": str(tmp_path / "o"),
           "search": {"lr": [1e-6, 1e-2], "budget_steps": 12, "val_fraction": 0.25},
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "checkpoints": False,
                     "num_threads": 1}}
    cfg = validate_raw(raw)
    data = load_task(cfg.task, cfg.train.seed)
    alone = exp.search_method(cfg, cfg.methods[0], data, exp.Encodings(cfg, data))
    assert not (tmp_path / "o").exists()
    assert alone["precision"] == "fp32" and alone["precision_reason"]
    (run,) = [r for r in exp.run_experiment(cfg, quiet=True) if r.method == "full"]
    in_run = run.details["lr_search"]
    assert [t["score"] for t in alone["trials"]] == [t["score"] for t in in_run["trials"]]
    assert alone["chosen"] == in_run["chosen"] and alone["n_val"] == in_run["n_val"] == 12
    with pytest.raises(PeftlabError, match="no search block"):
        exp.search_method(cfg.model_copy(update={"search": None}), cfg.methods[0], data, exp.Encodings(cfg, data))
