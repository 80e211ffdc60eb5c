"""``peftlab predict`` folds LoRA / (IA)^3 into the base weights: same predictions, no peft wrappers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def merge_run(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_tiny_csvs

    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    root = tmp_path_factory.mktemp("merge")
    write_tiny_csvs(root, 36, 12)
    cfg = validate_raw({
        "name": "merge", "backbone": tiny_bert,
        "task": {"source": "csv", "train_file": str(root / "train.csv"), "eval_file": str(root / "eval.csv")},
        # a large lr so the adapters move far from their identity initialisation
        "methods": [{"method": "lora", "r": 4, "lr": 3e-2, "target_modules": ["query", "value", "dense"]},
                    {"method": "ia3", "lr": 5e-2}],
        "train": {"epochs": 2, "batch_size": 8, "max_length": 32},
        "output_dir": str(root / "run"), "baseline": False,
    })
    results = run_experiment(cfg, quiet=True)
    assert [r.status for r in results] == ["ok", "ok"]
    return root / "run"


TEXTS = ["good drug really", "awful day the pain", "meh it was okay", "the drug was great"]


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merged_equals_unmerged(merge_run: Path, method: str):
    from peft import PeftModel

    from peftlab.runners.predict import load_predictor

    merged = load_predictor(merge_run / method)
    unmerged = load_predictor(merge_run / method, merge=False)
    assert not isinstance(merged.model, PeftModel) and isinstance(unmerged.model, PeftModel)
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.model.named_parameters())
    np.testing.assert_allclose(merged.probabilities(TEXTS), unmerged.probabilities(TEXTS), atol=1e-5)


def test_merge_changed_the_base_weights(merge_run: Path, tiny_bert: str):
    """An adapter that folded to nothing (B still zero) would pass the equality test trivially."""
    from transformers import AutoModelForSequenceClassification

    from peftlab.runners.predict import load_predictor

    merged = load_predictor(merge_run / "lora").model
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    delta = (merged.state_dict()[name] - base.state_dict()[name]).abs().max()
    assert float(delta) > 1e-4


def test_unmergeable_adapters_stay_wrapped(tiny_bert: str, monkeypatch: pytest.MonkeyPatch):
    """Prompt tuning has nothing to fold; a quantised base (QLoRA) must not be re-quantised."""
    from peft import LoraConfig, PeftModel, PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    import peftlab.runners.predict as predict

    def fresh() -> torch.nn.Module:
        return AutoModelForSequenceClassification.from_pretrained(tiny_bert)

    prompt = get_peft_model(fresh(), PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=2))
    assert predict.merge_for_inference(prompt) is prompt
    lora = get_peft_model(fresh(), LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query"]))
    monkeypatch.setattr(predict, "is_quantised", lambda _m: True)
    assert predict.merge_for_inference(lora) is lora
    monkeypatch.setattr(predict, "is_quantised", lambda _m: False)
    assert not isinstance(predict.merge_for_inference(lora), PeftModel)
