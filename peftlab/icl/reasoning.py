"""Reasoning mode: chain-of-thought answer extraction and self-consistency voting (pure
functions), plus the sampling loop that feeds them."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch


def _words(verbalizers: Sequence[Sequence[str]]) -> list[tuple[str, int]]:
    """(lower-cased verbalizer, label) pairs, longest first so 'not good' wins over 'good'."""
    pairs = [(w.strip().lower(), lab) for lab, ws in enumerate(verbalizers) for w in ws]
    return sorted(pairs, key=lambda p: -len(p[0]))


def _find_label(text: str, verbalizers: Sequence[Sequence[str]], last: bool) -> int | None:
    best: tuple[int, int] | None = None  # (position, label)
    taken: list[tuple[int, int]] = []
    for word, lab in _words(verbalizers):
        for m in re.finditer(r"(?<![a-z0-9])" + re.escape(word) + r"(?![a-z0-9])", text):
            span = (m.start(), m.end())
            if any(s < span[1] and span[0] < e for s, e in taken):
                continue  # inside a longer verbalizer already matched
            taken.append(span)
            if best is None or (m.start() > best[0] if last else m.start() < best[0]):
                best = (m.start(), lab)
    return None if best is None else best[1]


def extract_answer(text: str, verbalizers: Sequence[Sequence[str]], answer_prefix: str = "The answer is") -> int | None:
    """The label a generated chain of thought ends on, or None.

    After the last ``answer_prefix`` the first verbalizer wins ("The answer is positive, not
    negative" -> positive); with no such phrase, the last verbalizer mentioned in the text.
    Matching is case-insensitive on whole words.
    """
    low = text.lower()
    cut = low.rfind(answer_prefix.lower()) if answer_prefix else -1
    if cut >= 0:
        found = _find_label(low[cut + len(answer_prefix):], verbalizers, last=False)
        if found is not None:
            return found
    return _find_label(low, verbalizers, last=True)


def majority_vote(answers: Sequence[int | None], n_labels: int) -> int | None:
    """Self-consistency: the most frequent extracted answer; ties to the lowest label id; None
    when no chain produced an answer."""
    counts = Counter(a for a in answers if a is not None and 0 <= a < n_labels)
    if not counts:
        return None
    top = max(counts.values())
    return min(lab for lab, c in counts.items() if c == top)


@torch.no_grad()
def sample_chains(model: Any, tokenizer: Any, prompts: list[str], n: int, max_new_tokens: int,
                  temperature: float, seed: int) -> list[list[str]]:
    """``n`` continuations per prompt (greedy when n == 1, sampled otherwise)."""
    torch.manual_seed(seed)
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    try:
        out = []
        for prompt in prompts:
            enc = tokenizer([prompt], return_tensors="pt").to(next(model.parameters()).device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=n > 1,
                                 temperature=temperature if n > 1 else None, top_p=None, top_k=None,
                                 num_return_sequences=n, pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return out
    finally:
        tokenizer.padding_side = side
