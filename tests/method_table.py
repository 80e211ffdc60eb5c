"""Shared setup of the method-table tests (test_methods.py, and test_t5.py's rows on T5): a freshly
loaded tiny backbone, the tiny task's splits, and one short training run whose parameters are
snapshotted before and after, so each test file only holds its own rows and assertions."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers import DataCollatorWithPadding, set_seed

from conftest import tiny_rows
from peftlab.backbones.loaders import load_classifier, load_tokenizer, method_load_kwargs
from peftlab.config import BackboneConfig, TrainConfig
from peftlab.estimate.params import ArchSpec, arch_spec, count_params
from peftlab.runners.batching import encode
from peftlab.runners.experiment import _train
from peftlab.runners.train import make_accelerator, predict_logits
from peftlab.tasks.base import Split

LABELS = ["positive", "negative", "neutral"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core box they only spin.
    Autouse in every module that imports it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def split(n: int, seed: int) -> Split:
    rows = tiny_rows(n, seed)
    return Split(texts=[t for t, _ in rows], labels=np.array([LABELS.index(l) for _, l in rows]))


def fresh(path: str, method: Any = None, params: Any = None):
    """A freshly loaded backbone, loaded the way ``method`` needs (quantised for qlora)."""
    set_seed(0)
    cfg = BackboneConfig(name=path)
    tok = load_tokenizer(cfg)
    extra = method_load_kwargs(cfg, method, params, len(LABELS)) if method is not None else None
    if extra:  # these tests are the CPU path; bitsandbytes would put the base on a visible GPU
        extra["device_map"] = "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_classifier(cfg, LABELS, tok, extra), tok


def assert_counts_match_closed_form(method: Any, params: Any, model: nn.Module) -> None:
    """Once ``method`` has checked and prepared ``model``, its counted trainable / total parameters
    are the method's closed forms (or it claims none: the generic peft row)."""
    spec = arch_spec(model.config)
    method.check(params, spec, model.config.model_type)
    trainable, total = count_params(method.prepare(model, params, spec))
    assert 0 < trainable <= total
    if method.derived_trainable(params, spec) is None:  # no closed form: none is claimed, for the total neither
        assert method.derived_total(params, spec) is None
        return
    assert trainable == method.derived_trainable(params, spec)
    assert total == method.derived_total(params, spec)


class _Cfg:
    """The slice of ExperimentConfig that _train reads."""

    def __init__(self, train: TrainConfig) -> None:
        self.train = train


@dataclass
class Trained:
    """One short training run of a method on the tiny task, with what it changed."""

    model: nn.Module
    spec: ArchSpec
    losses: list[float]
    #: parameter names that require grad after ``prepare`` / whose values differ after training
    intended: set[str]
    changed: set[str]
    eval_f: Any
    collate: Any

    def logits(self, model: nn.Module) -> np.ndarray:
        return predict_logits(model, self.eval_f, self.collate, 16, torch.device("cpu"))

    def assert_trained_exactly_intended(self) -> None:
        """The loss fell, and exactly the parameters ``prepare`` made trainable changed."""
        assert self.losses[-1] < self.losses[0], self.losses
        changed, intended = self.changed, self.intended
        assert changed, "nothing trained"
        assert changed <= intended, f"frozen parameters changed: {sorted(changed - intended)[:3]}"
        # every intended tensor moved (LoRA's A and B both, the head, ...)
        assert changed == intended, f"trainable but unchanged: {sorted(intended - changed)[:3]}"


def train_tiny(method: Any, params: Any, model: nn.Module, tok: Any, epochs: int) -> Trained:
    """Prepare ``model`` for ``method`` and train it ``epochs`` epochs on 48 tiny rows (eval: 24)."""
    spec = arch_spec(model.config)
    model = method.prepare(model, params, spec)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    intended = {n for n, p in model.named_parameters() if p.requires_grad}

    tcfg = TrainConfig(epochs=epochs, batch_size=8, eval_batch_size=16, warmup_ratio=0.0, weight_decay=0.0, device="cpu")
    train_f, eval_f = encode(tok, split(48, 1), 32), encode(tok, split(24, 2), 32)
    collate = DataCollatorWithPadding(tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes 8-bit: "inputs will be cast to float16"
        model, out = _train(method, model, params, spec, _Cfg(tcfg), train_f, eval_f, collate,
                            make_accelerator(tcfg), True)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    return Trained(model, spec, [e.train_loss for e in out.epochs], intended, changed, eval_f, collate)
