"""``head: text``: an encoder-decoder classifies by scoring each label's verbalizer (issue 21).

The other head, ``head: classifier``, is T5ForSequenceClassification's pooled classification head
(peftlab.backbones.encoder_decoder). The text head adds no parameter: the model is the checkpoint's
own ``T5ForConditionalGeneration`` and a label is a string the decoder writes, as T5 was trained
("text-to-text") and as the course report ran it. Hence it is the default for encoder-decoders.

* verbalizers: each label's string(s), by default the label name itself (``positive``), or the
  ``verbalizers:`` mapping of the row or of the backbone (as the ``icl`` method has). Each is
  tokenised as the decoder's target on its own, ending with EOS: the score is then the exact
  log-likelihood of the LM writing that answer and stopping, so a verbalizer that is a prefix of
  another (``good`` / ``good enough``) does not win for free; multi-token verbalizers are summed
  over all their tokens.
* training: teacher-forced cross-entropy of the gold label's (first) verbalizer, the loss
  ``T5ForConditionalGeneration`` computes from ``labels`` (mean over the batch's target tokens).
* prediction: every verbalizer of every label is scored as the sum of its tokens' log-probabilities
  under teacher forcing; a label's score is the log-sum-exp over its verbalizers
  (:func:`peftlab.icl.calibration.label_scores`, the in-context scorer's rule; one verbalizer: its
  own score). Those per-label scores are the row's logits, so accuracy, per-class report, confusion
  matrix, predictions.jsonl (softmax over labels) and calibration come out as for every other row.

Why each (example, verbalizer) pair runs the model's whole forward rather than the encoder once:
peft's prompt methods (prompt tuning, P-tuning, prefix tuning) only act inside the peft model's own
forward, so scoring through that forward is the one path that is exact for every method, and it is
the very computation training differentiates. It costs the encoder once per verbalizer (2x for a
binary task), a known price of this first version.

The methods adapt the LM itself (peft task type SEQ_2_SEQ_LM, nothing in ``modules_to_save``;
peftlab.methods.peft_common.seq_cls_config), so a saved LoRA is a plain seq2seq adapter;
:class:`VerbalizerHead` wraps the adapted LM only for training and evaluation, and
:func:`lm_of` unwraps it for saving; the LM is loaded by
peftlab.backbones.loaders.load_text_lm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from peftlab.estimate.params import HEAD_ATTR, arch_spec
from peftlab.icl.calibration import label_scores
from peftlab.infra.errors import PeftlabError

TEXT, CLASSIFIER = "text", "classifier"

#: methods that run with ``head: text`` (each tested on a tiny T5: training, only its parameters
#: change, save/load round trip, counted == closed form)
TEXT_HEAD_METHODS = frozenset({"full", "partial", "lora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning",
                               "houlsby", "pfeiffer"})
#: methods refused with ``head: text``, and why
TEXT_HEAD_REFUSED = {
    "linear_probe": ("a linear probe trains the classification head alone, and head: text has none (its LM head "
                     "is the vocabulary-sized output layer, tied to the input embedding in T5); use head: classifier"),
}


def is_encoder_decoder(conf: Any) -> bool:
    spec = arch_spec(conf)
    return spec is not None and bool(spec.extra_stacks)


def resolve_head(requested: str | None, conf: Any, where: str) -> str:
    """``requested`` ("text", "classifier", "auto" or None = auto) for the backbone of ``conf``:
    auto is text for an encoder-decoder, classifier for every other backbone (the only head an
    encoder or a decoder-only classifier has here)."""
    if requested in (None, "auto"):
        return TEXT if is_encoder_decoder(conf) else CLASSIFIER
    if requested == TEXT and not is_encoder_decoder(conf):
        raise PeftlabError(f"config error: {where}: head: text needs an encoder-decoder backbone (T5 family), and "
                           f"{getattr(conf, 'model_type', '?')} is not one (use head: classifier)")
    return requested


def check_method(method: str, where: str) -> None:
    """Refuse a method that does not run with ``head: text`` (one config-error line)."""
    if method in TEXT_HEAD_REFUSED:
        raise PeftlabError(f"config error: {where}: {method} with head: text: {TEXT_HEAD_REFUSED[method]}")
    if method not in TEXT_HEAD_METHODS:
        raise PeftlabError(f"config error: {where}: {method} is not supported with head: text (supported: "
                           f"{', '.join(sorted(TEXT_HEAD_METHODS))}); use head: classifier")


def row_head(cfg: Any, params: Any, conf: Any, label_names: list[str] | None) -> str:
    """The head a fine-tuning row of experiment config ``cfg`` uses on the backbone of ``conf`` ("text" or "classifier",
    peftlab.backbones.text_head), with what ``head: text`` refuses: a method it does not run,
    ``train.class_weight`` (the teacher-forced loss is per token, not per class), verbalizers that
    miss a label (when the labels are known) or verbalizers on a classifier row."""
    where = f"methods.{params.label}"
    head = resolve_head(cfg.head_for(params), conf, where)
    mapping = cfg.verbalizers_for(params)
    if head != TEXT:
        if params.verbalizers is not None:
            raise PeftlabError(f"config error: {where}.verbalizers: only head: text scores verbalizers")
        return head
    check_method(params.method, where)
    if cfg.train.class_weight != "none":
        raise PeftlabError(f"config error: train.class_weight: {cfg.train.class_weight} does not reach {where}'s "
                           "head: text loss (the gold verbalizer's token cross-entropy); use head: classifier")
    if label_names is not None:
        verbalizers_for(label_names, mapping)
    return head


def mark(conf: Any, head: str) -> Any:
    """Tag ``conf`` so that ``arch_spec`` describes the seq2seq LM (peftlab.estimate.params.text_head_spec)."""
    if head == TEXT:
        setattr(conf, HEAD_ATTR, TEXT)
    return conf


def verbalizers_for(label_names: list[str], mapping: dict[str, list[str] | str] | None) -> list[list[str]]:
    """Each label's verbalizers in label order: ``mapping``'s (a string or a list), else its name."""
    mapping = mapping or {}
    unknown = sorted(set(mapping) - set(label_names))
    if unknown:
        raise PeftlabError(f"config error: verbalizers: {unknown} are not labels of this task (labels: {label_names})")
    out = [[mapping[n]] if isinstance(mapping.get(n), str) else list(mapping.get(n) or [n]) for n in label_names]
    for n, words in zip(label_names, out):
        if not words or any(not w.strip() for w in words):
            raise PeftlabError(f"config error: verbalizers.{n}: needs one or more non-blank strings")
    return out


def encode_verbalizers(tokenizer: Any, verbalizers: list[list[str]]) -> tuple[torch.Tensor, list[int]]:
    """(targets, owners): one row per verbalizer, its token ids ending with EOS, padded with -100
    (ignored by the loss and the sums); ``owners[i]`` is the label of row ``i``. Two verbalizers
    with the same tokens would make their labels tie on every input: refused."""
    eos = tokenizer.eos_token_id
    rows: list[list[int]] = []
    owners: list[int] = []
    for label, words in enumerate(verbalizers):
        for w in words:
            ids = list(tokenizer(w.strip()).input_ids)
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            rows.append(ids)
            owners.append(label)
    seen: dict[tuple[int, ...], int] = {}
    for i, ids in enumerate(rows):
        j = seen.setdefault(tuple(ids), i)
        if j != i and owners[j] != owners[i]:
            flat = [w for ws in verbalizers for w in ws]
            raise PeftlabError(f"config error: verbalizers {flat[j]!r} and {flat[i]!r} tokenise the same; "
                               "give the labels distinct verbalizers")
    width = max(len(r) for r in rows)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, ids in enumerate(rows):
        targets[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return targets, owners


class VerbalizerHead(nn.Module):
    """The adapted seq2seq LM as a classifier: ``forward(input_ids, attention_mask, labels)`` gives
    the teacher-forced loss of the gold verbalizer and, outside training, per-label log-likelihoods
    as ``logits`` (see the module docstring). Holds no parameter of its own."""

    def __init__(self, lm: nn.Module, targets: torch.Tensor, owners: list[int], num_labels: int) -> None:
        super().__init__()
        self.lm = lm
        self.register_buffer("targets", targets, persistent=False)
        self.owners = list(owners)
        self.num_labels = num_labels
        #: the row of each label's first verbalizer: the training target
        self.gold_rows = torch.tensor([owners.index(k) for k in range(num_labels)], dtype=torch.long)

    @property
    def config(self) -> Any:
        return self.lm.config

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_: Any) -> SequenceClassifierOutput:
        loss = None
        if labels is not None:
            gold = self.targets[self.gold_rows.to(labels.device)[labels]]
            loss = self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=gold).loss
        logits = None if labels is not None and self.training else self.label_scores(input_ids, attention_mask)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def verbalizer_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(batch, verbalizers): each verbalizer's summed token log-likelihood after each input."""
        n, b = self.targets.shape[0], input_ids.shape[0]
        targets = self.targets.repeat(b, 1)
        mask = None if attention_mask is None else attention_mask.repeat_interleave(n, 0)
        logits = self.lm(input_ids=input_ids.repeat_interleave(n, 0), attention_mask=mask, labels=targets).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        real = targets != -100
        token = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (token * real).sum(-1).view(b, n)

    def label_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        scores = self.verbalizer_scores(input_ids, attention_mask)
        if self.owners == list(range(self.num_labels)):
            return scores
        rows = [label_scores(row, self.owners, self.num_labels) for row in scores.detach().cpu().double().numpy()]
        return torch.from_numpy(np.stack(rows)).to(scores)


def attach(model: nn.Module, head: str, tokenizer: Any, label_names: list[str],
           mapping: dict[str, list[str] | str] | None) -> nn.Module:
    """``model`` (a prepared classifier, or a prepared LM under ``head: text``) as the training loop
    and the evaluation call it: the classifier itself, or the LM inside a :class:`VerbalizerHead`."""
    if head != TEXT:
        return model
    targets, owners = encode_verbalizers(tokenizer, verbalizers_for(label_names, mapping))
    return VerbalizerHead(model, targets, owners, len(label_names))


def lm_of(model: nn.Module) -> nn.Module:
    """What the method saves: the LM inside a :class:`VerbalizerHead`, any other model itself."""
    return model.lm if isinstance(model, VerbalizerHead) else model
