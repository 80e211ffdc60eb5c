"""In-context rows end to end on a tiny random causal Llama, next to a LoRA row on another
backbone in the same config; the GGUF cache; the per-method backbone in configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import LlamaForCausalLM

from conftest import save_tiny_causal_lm
from peftlab.config import validate_raw
from peftlab.infra.errors import PeftlabError
from peftlab.backbones.gguf_cache import CACHE_ENV, DONE_MARK, cached_folder
from peftlab.icl.scoring import encode_requests, score_brute
from peftlab.prompts.template import load_template, render_context
from peftlab.runners.experiment import run_experiment
from peftlab.tasks import load_task

VERBALIZERS = {"positive": " good", "negative": " bad", "neutral": " meh"}
EXAMPLE = "{text} so it was"


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory) -> str:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"), seed=1)


def _config(tiny_causal: str, tiny_bert: str, csvs: tuple[Path, Path], out: Path, methods: list[dict]) -> dict:
    train, ev = csvs
    return {
        "name": "icl", "backbone": tiny_bert,
        "task": {"source": "csv", "train_file": str(train), "eval_file": str(ev)},
        "methods": methods,
        "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "num_threads": 1, "device": "cpu"},
        "output_dir": str(out),
    }


def _icl(name: str, tiny_causal: str, **kw) -> dict:
    return {"method": "icl", "name": name, "backbone": tiny_causal, "example": EXAMPLE,
            "verbalizers": VERBALIZERS, "instruction": "the drug", "batch_size": 4, **kw}


def test_icl_rows_sit_next_to_lora_rows(tiny_causal, tiny_bert, tiny_csv, tmp_path):
    raw = _config(tiny_causal, tiny_bert, tiny_csv, tmp_path / "run", [
        _icl("zero_shot", tiny_causal),
        _icl("two_shot", tiny_causal, shots=2, seeds=[0, 1, 2]),
        _icl("near", tiny_causal, shots=1, selection="nearest", embedder=tiny_bert, calibrate=True),
        {"method": "lora", "name": "lora_bert", "lr": 1e-3},
        {"method": "lora", "name": "lora_llama", "backbone": tiny_causal, "lr": 1e-3},
        _icl("lm_lora", tiny_causal, method="lm_lora", lr=5e-3),
    ])
    cfg = validate_raw(raw)
    results = {r.name: r for r in run_experiment(cfg, quiet=True)}
    assert all(r.status == "ok" for r in results.values()), {n: r.error for n, r in results.items()}
    zs = results["zero_shot"]
    assert zs.params.trainable == 0 and zs.params.total > 0 and zs.backbone == tiny_causal
    assert zs.timing.eval_examples_per_s > 0 and zs.peak_memory_bytes > 0
    two = results["two_shot"]
    assert two.seeds == [0, 1, 2] and len(two.seed_accuracy) == 3
    assert two.accuracy == pytest.approx(np.mean(two.seed_accuracy))
    assert two.accuracy_std == pytest.approx(np.std(two.seed_accuracy, ddof=1))
    assert sum(map(sum, two.confusion_matrix)) == 3 * zs.n_eval  # pooled over the seeds
    assert results["near"].seeds == [0]  # nearest-neighbour prompts do not depend on the seed
    assert results["lora_bert"].backbone == tiny_bert and results["lora_llama"].backbone == tiny_causal
    lm = results["lm_lora"]
    assert 0 < lm.params.trainable < lm.params.total and lm.epochs[0].train_loss > 0
    assert (tmp_path / "run" / "lm_lora" / "adapter" / "adapter_config.json").is_file()
    md = (tmp_path / "run" / "comparison.md").read_text(encoding="utf-8")
    for name in ("zero_shot", "two_shot", "near", "lora_bert", "lora_llama", "lm_lora", "majority_class"):
        assert f"| {name} |" in md
    assert " ± " in md
    # the zero-shot row's accuracy is what brute-force scoring of the same prompts gives
    data = load_task(cfg.task, 0)
    tpl = load_template("sentiment", {"example": EXAMPLE, "verbalizers": VERBALIZERS, "instruction": "the drug"})
    answers = [w for ws in tpl.for_labels(data.label_names) for w in ws]
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_causal)
    enc = encode_requests(tok, [render_context(tpl, [], t, None) for t in data.eval.texts], [answers] * len(data.eval))
    model = LlamaForCausalLM.from_pretrained(tiny_causal)
    pred = np.asarray(score_brute(model, enc)).argmax(1)
    assert zs.accuracy == pytest.approx(float((pred == data.eval.labels).mean()))
    # predictions.jsonl: the zero-shot row's answers are the brute-force ones; several demonstration
    # seeds give one pass each, whose mean accuracy is the row's
    from peftlab.results import read_predictions

    zp = read_predictions(tmp_path / "run" / "zero_shot" / "predictions.jsonl")
    assert zp.seed is None and np.array_equal(zp.pred, pred) and np.array_equal(zp.gold, data.eval.labels)
    assert np.allclose(zp.probs.sum(1), 1.0) and np.array_equal(zp.probs.argmax(1), pred)
    tp = read_predictions(tmp_path / "run" / "two_shot" / "predictions.jsonl")
    assert sorted(set(tp.seed.tolist())) == [0, 1, 2] and len(tp.index) == 3 * zs.n_eval
    assert float(tp.correct_per_example()[2].mean()) == pytest.approx(two.accuracy)
    for name in ("near", "lora_bert", "lora_llama", "lm_lora", "majority_class"):
        assert (tmp_path / "run" / name / "predictions.jsonl").is_file(), name
    # the calibrated row keeps its probabilities before contextual calibration; the report shows both
    from peftlab.report.calibration import calibration_of

    near = read_predictions(tmp_path / "run" / "near" / "predictions.jsonl")
    assert near.raw_probs is not None and np.allclose(near.raw_probs.sum(1), 1.0)
    assert not np.allclose(near.raw_probs, near.probs) and np.array_equal(near.probs.argmax(1), near.pred)
    assert zp.raw_probs is None and tp.raw_probs is None  # uncalibrated rows store one set
    cal = calibration_of(near)
    near_line = next(ln for ln in md.splitlines() if ln.startswith("| near |"))
    assert f"{cal.ece:.3f} (before {cal.before.ece:.3f})" in near_line
    assert "before contextual calibration: NLL" in (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "vs best (paired)" in md
    stored = json.loads((tmp_path / "run" / "two_shot" / "results.json").read_text())
    assert stored["seed_accuracy"] == two.seed_accuracy
    # predict reloads a LoRA row on its own backbone, and refuses prompting rows in one line
    from peftlab.runners.predict import load_predictor

    assert load_predictor(tmp_path / "run" / "lora_llama").probabilities(["good drug"]).shape == (1, 3)
    with pytest.raises(PeftlabError, match="prompt an LM"):
        load_predictor(tmp_path / "run" / "zero_shot")


def test_reasoning_rows_run(tiny_causal, tiny_bert, tiny_csv, tmp_path):
    raw = _config(tiny_causal, tiny_bert, tiny_csv, tmp_path / "run", [
        _icl("cot", tiny_causal, reasoning="cot", max_new_tokens=4),
        _icl("sc", tiny_causal, reasoning="self_consistency", samples=3, max_new_tokens=4),
    ])
    raw["task"]["n_eval"] = 6
    results = run_experiment(validate_raw(raw), quiet=True)
    assert [r.status for r in results[1:]] == ["ok", "ok"], [r.error for r in results]
    assert all(r.n_eval == 6 and r.accuracy is not None for r in results[1:])
    from peftlab.results import read_predictions

    for r in results[1:]:  # vote shares over the chains (NaN where no chain named a label)
        got = read_predictions(tmp_path / "run" / r.name / "predictions.jsonl")
        assert float(np.mean(got.pred == got.gold)) == pytest.approx(r.accuracy)
        answered = ~np.isnan(got.probs).any(1)
        assert np.allclose(got.probs[answered].sum(1), 1.0)


def test_icl_config_errors_name_the_field(tiny_bert, tiny_csv, tmp_path):
    base = _config("x", tiny_bert, tiny_csv, tmp_path, [])
    with pytest.raises(PeftlabError, match=r"methods\[0\]\.shots"):
        validate_raw({**base, "methods": [{"method": "icl", "shots": -1}]})
    with pytest.raises(PeftlabError, match=r"methods\[0\]\.selection"):
        validate_raw({**base, "methods": [{"method": "icl", "selection": "closest"}]})
    with pytest.raises(PeftlabError, match=r"methods\[0\]\.backbone"):
        validate_raw({**base, "methods": [{"method": "lora", "backbone": ""}]})
    from peftlab.runners.experiment import preflight

    with pytest.raises(PeftlabError, match="needs a causal LM backbone"):
        preflight(validate_raw({**base, "methods": [{"method": "icl"}]}))  # the experiment's BERT


def test_gguf_cache_builds_once_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}", encoding="utf-8")

    first = cached_folder("m", build)
    assert first == tmp_path / "cache" / "m" and (first / DONE_MARK).is_file()
    assert cached_folder("m", build) == first and len(calls) == 1

    def broken(out: Path) -> None:
        (out / "half.bin").write_text("x", encoding="utf-8")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        cached_folder("n", broken)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["m"]  # no half-built folder left


def test_shipped_icl_config_validates():
    from peftlab.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / "icl_drugreview.yaml")
    rows = {m.label: m for m in cfg.methods}
    assert [rows[n].shots for n in ("zero_shot", "one_shot", "four_shot")] == [0, 1, 4]
    assert cfg.backbone_for(rows["lora_smollm2"]).name == "smollm2-135m"
    assert cfg.backbone_for(rows["lora_minilm"]).name == "minilm-l6"
