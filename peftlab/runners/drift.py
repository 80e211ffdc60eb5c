"""Backbone drift of an encoder row: its pooled features before and after adaptation (issue 22).

The base features are taken from the very model the row loaded, before the method touches it,
so the check costs one forward pass over at most ``DRIFT_MAX_EXAMPLES`` evaluation inputs and
no second copy of the weights (a second load would double the memory of large backbones). The
adapted features come from the trained model's forward, whatever the method did to it, so the
figure is method-agnostic: full fine-tuning, adapters, prompts and a linear probe (CKA 1: the
backbone never moved) are measured the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from peftlab.backbones.encoder_decoder import last_hidden
from peftlab.estimate.drift import linear_cka
from peftlab.runners.batching import Features

#: evaluation inputs the drift is measured on: CKA settles well before this, and the cap keeps
#: the extra forward passes small next to evaluation on large eval splits
DRIFT_MAX_EXAMPLES = 512


def pooled_features(model: torch.nn.Module, feats: Features, collate: Any, batch_size: int,
                    device: torch.device | None = None, limit: int = DRIFT_MAX_EXAMPLES) -> np.ndarray:
    """Last hidden state mean-pooled over each input's own tokens, (n, hidden) in float32.

    Prompt tuning and p-tuning prepend virtual tokens to the sequence, so only the last
    ``input length`` positions are pooled, weighted by the input's attention mask: the same
    positions as in the base model. Prefix tuning adds no positions (its prefix sits in the
    key/value cache). ``device``: where to run; None = where the model's weights are.
    """
    was_training = model.training
    model.eval()
    dev = device or next(model.parameters()).device
    n = min(len(feats), limit)
    out: list[np.ndarray] = []
    try:
        for start in range(0, n, batch_size):
            batch = collate([{k: v for k, v in feats[i].items() if k != "labels"}
                             for i in range(start, min(n, start + batch_size))])
            batch = {k: v.to(dev) for k, v in batch.items()}
            with torch.no_grad():
                hidden = last_hidden(model(**batch, output_hidden_states=True))
            length = batch["input_ids"].shape[1]
            hidden = hidden[:, -length:, :].float()
            mask = batch.get("attention_mask", torch.ones(hidden.shape[:2], device=dev))
            mask = mask.to(hidden.dtype).unsqueeze(-1)
            out.append((hidden * mask).sum(1).div(mask.sum(1).clamp(min=1)).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def base_features(model: torch.nn.Module, feats: Features, collate: Any, batch_size: int,
                  device: torch.device) -> tuple[np.ndarray, float]:
    """The freshly loaded model's features on ``device``, and the seconds spent (the runner takes
    them out of the row's wall time: the check is not the method's cost).

    A model placed by ``device_map`` (quantised loads) stays where it is; any other runs on the
    row's device and goes back where it was, so the method receives it exactly as loaded.
    """
    t0 = time.perf_counter()
    with visiting(model, device) as where:
        x = pooled_features(model, feats, collate, batch_size, where)
    return x, time.perf_counter() - t0


@contextmanager
def visiting(model: torch.nn.Module, device: torch.device) -> Iterator[torch.device | None]:
    """Run a freshly loaded model on ``device`` and put it back where it was, so the method
    receives it exactly as loaded; a model placed by ``device_map`` (quantised loads) stays put
    (yields None: feed it where its weights are)."""
    placed = getattr(model, "hf_device_map", None) is not None
    home = next(model.parameters()).device
    moved = not placed and home != device
    if moved:
        model.to(device)
    try:
        yield None if placed else device
    finally:
        if moved:
            model.to(home)


def drift_record(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """``details.drift`` of results.json: linear CKA of adapted to base features (1 = unchanged)
    and the number of evaluation inputs it was measured on."""
    return {"cka": linear_cka(before, after), "n": int(before.shape[0])}


#: the shipped reference text causal-LM rows are scored on (public domain: the Gettysburg Address,
#: the Constitution's Preamble, the Declaration of Independence's opening and the Bill of Rights)
REFERENCE_TEXT = "estimate/data/reference.txt"
#: tokens per forward pass over the reference text: short enough for any context and for small
#: GPUs, long enough that most tokens see a real context
LM_LOSS_CHUNK = 256


def reference_text() -> str:
    """The reference text, from the installed package (pyproject's package-data ships it)."""
    from importlib.resources import files

    return files("peftlab").joinpath(REFERENCE_TEXT).read_text(encoding="utf-8")


def reference_lm_loss(model: torch.nn.Module, tokenizer: Any, device: torch.device, limit: int | None = None,
                      autocast: Any = None) -> dict[str, float | int]:
    """Mean next-token NLL (nats per token) of the reference text, and the tokens it averages over.

    Cut into consecutive chunks of ``LM_LOSS_CHUNK`` tokens (fewer when the model's context
    ``limit`` is shorter), each scored alone in eval mode, so the figure depends only on the
    weights: the same model gives the same loss, which is what lets "before" and "after" be
    compared. A model placed by ``device_map`` is fed on its first weights' device.
    """
    ids = tokenizer(reference_text(), add_special_tokens=False)["input_ids"]
    chunk = max(2, min(LM_LOSS_CHUNK, limit or LM_LOSS_CHUNK))
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    dev = device if getattr(model, "hf_device_map", None) is None else next(model.parameters()).device
    try:
        for start in range(0, len(ids) - 1, chunk):
            piece = torch.tensor([ids[start:start + chunk]], device=dev)
            if piece.shape[1] < 2:
                break
            with torch.no_grad(), (autocast() if autocast is not None else nullcontext()):
                logits = model(input_ids=piece).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, piece[0, 1:], reduction="sum")
            total += float(nll)
            count += piece.shape[1] - 1
    finally:
        model.train(was_training)
    return {"loss": total / count if count else float("nan"), "tokens": count}


class TrunkLM(torch.nn.Module):
    """A causal backbone's classifier seen as the language model it came from: its transformer
    trunk (as adapted: LoRA layers, adapters, trained weights) followed by the pre-trained LM head.

    A sequence-classification load replaces the LM head by a score head, so "how much did
    adapting the classifier cost the LM" needs the LM head back: the input embeddings when the
    checkpoint ties them (SmolLM2), else ``lm_head.weight`` read from the checkpoint. Prompt
    tuning's virtual tokens are not prepended (the trunk is called directly): its weights are the
    base's, and so is its loss.
    """

    def __init__(self, classifier: torch.nn.Module, lm_head: torch.Tensor | None) -> None:
        super().__init__()
        inner = classifier.get_base_model() if hasattr(classifier, "get_base_model") else classifier
        self.trunk = getattr(inner, inner.base_model_prefix)
        self.lm_head = lm_head
        # reference_lm_loss feeds a device_map-placed model where its weights are
        self.hf_device_map = getattr(classifier, "hf_device_map", None)

    def forward(self, input_ids: torch.Tensor) -> Any:
        hidden = self.trunk(input_ids=input_ids).last_hidden_state
        weight = self.lm_head if self.lm_head is not None else self.trunk.get_input_embeddings().weight
        return _Logits(hidden.float() @ weight.to(hidden.device, torch.float32).T)


class _Logits:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


def lm_head_of(config: Any, read_checkpoint: Any) -> tuple[bool, torch.Tensor | None]:
    """(measurable, untied LM head): tied checkpoints use the trunk's own input embeddings
    (None); an untied one needs ``read_checkpoint("lm_head.weight")``, and without it the LM loss
    is not measured (False)."""
    if getattr(config, "tie_word_embeddings", False):
        return True, None
    weight = read_checkpoint("lm_head.weight")
    return weight is not None, weight


def lm_loss_record(before: dict[str, float | int], after: dict[str, float | int]) -> dict[str, float | int]:
    """``details.lm_loss`` of results.json: the reference text's mean token NLL before and after."""
    return {"base": before["loss"], "adapted": after["loss"], "tokens": before["tokens"]}
