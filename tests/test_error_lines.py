"""The shared one-line error helpers: ``errors.first_line``, ``io.read_json``, peft's refusals (``wrap_peft``) and
Hugging Face dataset splits (``hf_split``), each used by several loaders."""

from __future__ import annotations

import pytest

from peftlab.config import TaskConfig
from peftlab.infra.errors import PeftlabError, first_line


@pytest.mark.parametrize("exc, want", [
    (ValueError("bad value\nTraceback detail"), "bad value"),
    (OSError("  \n  after blank lines\nmore"), "after blank lines"),
    (KeyError(), "KeyError"),
    (RuntimeError("   "), "RuntimeError"),
])
def test_first_line(exc, want):
    assert first_line(exc) == want


def test_peft_refusal_is_one_line(tiny_bert):
    from peft import LoraConfig, TaskType
    from transformers import AutoModelForSequenceClassification

    from peftlab.methods.peft_common import wrap_peft

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    with pytest.raises(PeftlabError, match=r"^lora: peft refused this backbone: .*target") as info:
        wrap_peft("lora", model, LoraConfig(task_type=TaskType.SEQ_CLS, target_modules=["nowhere"]))
    assert "\n" not in str(info.value)


def test_missing_hf_split_is_one_line(tmp_path):
    from peftlab.tasks.hub import hf_split

    cfg = TaskConfig(source="hf", hf_id="csv")
    with pytest.raises(PeftlabError, match=r"^task.hf_id 'csv' split 'train': cannot load \(") as info:
        hf_split(cfg, "train", data_files=str(tmp_path / "missing.csv"))
    assert "\n" not in str(info.value)


def test_read_json_errors_name_the_file(tmp_path):
    from peftlab.infra.io import read_json

    (tmp_path / "ok.json").write_text('{"a": [1, 2]}', encoding="utf-8")
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    (tmp_path / "bad.json").write_text('{"a": ', encoding="utf-8")
    for name in ("bad.json", "missing.json"):
        with pytest.raises(PeftlabError, match=rf"^cannot read {tmp_path / name}: "):
            read_json(tmp_path / name)
