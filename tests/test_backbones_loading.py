"""The one guard around every weights ``from_pretrained`` (text classifiers, image classifiers,
CLIP, causal LMs): a bad backbone is one PeftlabError line naming it, and transformers' logging
and progress bars are put back however the load ends."""

from __future__ import annotations

import pytest
from transformers.utils import logging as hf_logging

from peftlab.backbones.loaders import load_classifier, load_tokenizer, loading_weights
from peftlab.config import BackboneConfig
from peftlab.infra.errors import PeftlabError


@pytest.mark.parametrize("quiet", [True, False])
def test_load_errors_become_one_line_and_logging_is_restored(tmp_path, quiet):
    before = hf_logging.get_verbosity()
    cfg = BackboneConfig(name=str(tmp_path))
    with pytest.raises(PeftlabError, match=rf"^backbone '.*': cannot load as local path \(boom\)$"):
        with loading_weights(cfg, quiet=quiet):
            assert (hf_logging.get_verbosity() == hf_logging.ERROR) == quiet or before == hf_logging.ERROR
            assert not hf_logging.is_progress_bar_enabled()
            raise OSError("boom\nsecond line")
    assert hf_logging.get_verbosity() == before and hf_logging.is_progress_bar_enabled()
    with pytest.raises(ZeroDivisionError):  # a bug is not the user's input: it keeps its traceback
        with loading_weights(cfg, quiet=quiet):
            raise ZeroDivisionError
    assert hf_logging.get_verbosity() == before and hf_logging.is_progress_bar_enabled()


def test_missing_weights_name_the_backbone(tiny_bert, tmp_path):
    import shutil

    shutil.copytree(tiny_bert, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    cfg = BackboneConfig(name=str(tmp_path / "m"))
    with pytest.raises(PeftlabError, match=r"^backbone '.*m': cannot load as local path \(") as info:
        load_classifier(cfg, ["a", "b", "c"], load_tokenizer(cfg))
    assert "\n" not in str(info.value)


def test_truncated_weights_name_the_backbone(tiny_bert, tmp_path):
    """A cut-off model.safetensors (an interrupted download) is one line, not safetensors' traceback."""
    import shutil

    shutil.copytree(tiny_bert, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    cfg = BackboneConfig(name=str(tmp_path / "m"))
    with pytest.raises(PeftlabError, match=r"^backbone '.*m': cannot load as local path \(") as info:
        load_classifier(cfg, ["a", "b", "c"], load_tokenizer(cfg))
    assert "\n" not in str(info.value)
