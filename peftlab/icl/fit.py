"""Fitting a prompt into the model's context window, with one documented rule.

A prompt longer than the model's context cannot be scored as is: positions past
``max_position_embeddings`` are undefined (learned position tables crash, rotary models
silently degrade). lm-evaluation-harness keeps the last ``max_length`` tokens, which cuts the
instruction first. peftlab keeps what makes the prompt a prompt:

1. the **verbalizer continuation** (the longest one, tokenised with the prompt as the scorer
   does) and, in reasoning mode, room for ``max_new_tokens`` are always kept whole;
2. **demonstrations are dropped first**, the one farthest from the query first, until the prompt
   fits or none is left;
3. then the **query's input text is left-truncated** (its beginning is cut, its end kept:
   ``{text}`` first, then ``{pair}``), token by token, at a token boundary of the original string;
4. the instruction and the example format around ``{text}``/``{pair}`` (the answer cue, such as
   "Sentiment:") are never cut. If they alone, with the reserve, exceed the context, that is one
   error line naming the template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peftlab.infra.errors import PeftlabError

#: a prompt renderer: (demonstrations, text, pair) -> prompt string
Render = Callable[[list[Any], str, "str | None"], str]


@dataclass(frozen=True)
class Window:
    """``limit`` tokens of context. A prompt fits when the prompt followed by its longest answer
    (tokenised together, as the scorer does) plus ``reserve`` free tokens (room to generate in
    reasoning mode) is at most ``limit`` tokens."""

    limit: int
    answers: tuple[str, ...] = ("",)
    reserve: int = 0


def context_limit(model: Any, tokenizer: Any) -> int | None:
    """The model's context length: its position table, or the tokenizer's limit if smaller.
    None when neither says (then nothing is truncated)."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(usable) if usable else None


def left_truncate(tokenizer: Any, text: str, n_tokens: int) -> str:
    """``text`` without its first ``n_tokens`` tokens, cut at a token boundary of the original
    string (offsets of a fast tokenizer), else re-decoded from the kept tokens."""
    if n_tokens <= 0:
        return text
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        return "" if n_tokens >= len(offsets) else text[offsets[n_tokens][0]:]
    except (NotImplementedError, KeyError, TypeError):  # slow tokenizers have no offsets
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return tokenizer.decode(ids[n_tokens:]) if n_tokens < len(ids) else ""


@dataclass
class Fitted:
    prompt: str
    dropped_demos: int = 0
    truncated_text: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.dropped_demos) or self.truncated_text


def fit_prompt(render: Render, tokenizer: Any, window: Window, demos: list[Any], text: str, pair: str | None,
               template: str) -> Fitted:
    """The prompt of ``demos`` + query, shortened by the module's rule until
    ``tokens(prompt + longest answer) + window.reserve <= window.limit``."""

    def over(prompt: str) -> int:
        ids = tokenizer([prompt + a for a in window.answers]).input_ids
        return max(map(len, ids)) + window.reserve - window.limit

    prompt = render(demos, text, pair)
    if over(prompt) <= 0:
        return Fitted(prompt)
    kept = list(demos)
    while kept:
        kept = kept[1:]  # the demonstration farthest from the query goes first
        prompt = render(kept, text, pair)
        if over(prompt) <= 0:
            return Fitted(prompt, dropped_demos=len(demos) - len(kept))
    dropped = len(demos)
    for field in ("text", "pair"):
        while (excess := over(prompt)) > 0 and (text if field == "text" else pair):
            if field == "text":
                shorter = left_truncate(tokenizer, text, excess)
                text = shorter if shorter != text else ""  # always progress
            else:
                shorter = left_truncate(tokenizer, pair or "", excess)
                pair = shorter if shorter != pair else ""
            prompt = render(kept, text, pair)
        if over(prompt) <= 0:
            return Fitted(prompt, dropped_demos=dropped, truncated_text=True)
    raise PeftlabError(
        f"template {template!r}: its instruction and example format with an empty input, plus the longest "
        f"answer{f' and {window.reserve} generated tokens' if window.reserve else ''}, need "
        f"{over(prompt) + window.limit} tokens, more than the model's context of {window.limit}; "
        f"shorten the template{' or max_new_tokens' if window.reserve else ''}")
