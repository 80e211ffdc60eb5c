"""What newer dependencies must not change (issue 18): one-line usage errors whatever click typer
ships, no stderr line from a dependency the user did not ask for, and the supported KV-cache API
(no deprecation warnings from transformers) in the in-context scorer and in prefix tuning."""

from __future__ import annotations

import contextlib
import os
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from conftest import make_tokenizer, run_cli, run_cli_process, tiny_config, write_tiny_csvs
from peftlab.backbones.hub_kernels import HubKernelsRefused, hub_kernels_refused

USAGE_ERRORS = {
    "unknown option": ("run", "{config}", "--no-such-option"),
    "unknown verb": ("nosuchverb",),
    "missing argument": ("run",),
    "bad option value": ("run", "{config}", "--parallel", "abc"),
    "missing argument of predict": ("predict",),
}


def _config(tmp_path: Path, backbone: str, **task) -> Path:
    train, ev = write_tiny_csvs(tmp_path)
    raw = {"name": "t", "backbone": backbone, "output_dir": str(tmp_path / "out"),
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(ev), **task},
           "methods": [{"method": "full"}], "train": {"epochs": 1, "batch_size": 8, "max_length": 16}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_are_one_line_exit_2(tmp_path, tiny_bert, case):
    config = str(_config(tmp_path, tiny_bert))
    proc = run_cli(*(a.format(config=config) for a in USAGE_ERRORS[case]))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "--help" in lines[0]


def test_real_run_on_bad_data_and_bad_usage_one_stderr_line(tmp_path, tiny_bert):
    """The real entry point in a fresh interpreter: every import a run makes (peft, bitsandbytes,
    transformers, kernels) happens, and stderr holds only peftlab's own line."""
    config = _config(tmp_path, tiny_bert, label_column="no_such_column")
    bad_data = run_cli_process("run", str(config), "-q", timeout=300)
    assert bad_data.returncode == 2 and bad_data.stderr.count("\n") == 1, bad_data.stderr
    assert bad_data.stderr.startswith("error: ") and "no_such_column" in bad_data.stderr
    usage = run_cli_process("run", str(config), "--no-such-option", timeout=300)
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1, usage.stderr
    assert "--no-such-option" in usage.stderr


def test_bitsandbytes_import_fetches_no_hub_kernel():
    """Imported after peftlab, bitsandbytes' package body runs with hub kernels refused (its loader
    is peftlab's wrapper) and prints nothing; kernels.get_kernel itself is left working."""
    code = ("import peftlab, peft, bitsandbytes, kernels\n"
            "print(type(bitsandbytes.__spec__.loader).__name__, kernels.get_kernel.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.split() == ["_RefusingLoader", "get_kernel"]


def test_hub_kernels_refused_restores_kernels():
    import kernels

    real = kernels.get_kernel
    with hub_kernels_refused():
        from kernels import get_kernel

        with pytest.raises(HubKernelsRefused):
            get_kernel("kernels-community/anything", version=1)
    assert kernels.get_kernel is real


@contextlib.contextmanager
def no_deprecations() -> Iterator[list[str]]:
    """Python warnings become errors, and transformers' logged warnings (its ``warning_once``
    cache cleared first, so an earlier test cannot hide one) are collected."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    root = hf_logging.get_logger("transformers")
    hf_logging.warning_once.cache_clear()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield seen
    finally:
        root.removeHandler(handler)


def test_icl_scorer_uses_the_supported_cache_api(tmp_path):
    from peftlab.icl.scoring import PrefixScorer, encode_requests

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama")).eval()
    tok = make_tokenizer(tmp_path, with_cls=False)
    contexts = ["the drug was good so the drug was " + w for w in ("bad", "very good", "it")]
    enc = encode_requests(tok, contexts, [[" good", " not very good", " meh okay"]] * 3)
    with no_deprecations() as seen:
        scores = PrefixScorer(model, pad_id=0, batch_size=2).score(enc)
    assert not [m for m in seen if "deprecat" in m.lower()], seen
    assert len(scores) == 3 and all(len(s) == 3 for s in scores)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_prefix_tuning_uses_the_supported_cache_api(tiny_backbones, family):
    from peftlab.methods import METHODS
    from peftlab.estimate.params import arch_spec

    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbones[family])
    method = METHODS.get("prefix_tuning")
    model = method.prepare(model, method.Params(num_virtual_tokens=3), arch_spec(model.config))
    ids = torch.tensor([[5, 6, 7, 8], [5, 9, 0, 0]])
    mask = (ids != 0).long()
    with no_deprecations() as seen:
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
        out.loss.backward()
    assert not [m for m in seen if "deprecat" in m.lower()], seen
    prefix = [p for n, p in model.named_parameters() if p.requires_grad and "prompt_encoder" in n]
    assert prefix and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefix)


def test_transformers_hub_kernels_off_unless_asked(tiny_bert, monkeypatch):
    """transformers >= 5.25 defaults from_pretrained to hub kernels (fetched at the first
    train()/eval() on CUDA); peftlab's import turns its switch off, and a user's own value wins."""
    from peftlab.backbones.hub_kernels import TRANSFORMERS_SWITCH, install

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    assert getattr(model, "use_kernels", False) is False
    monkeypatch.setenv(TRANSFORMERS_SWITCH, "YES")
    install()
    assert os.environ[TRANSFORMERS_SWITCH] == "YES"
    monkeypatch.delenv(TRANSFORMERS_SWITCH)
    install()
    assert os.environ[TRANSFORMERS_SWITCH] == "NO"
