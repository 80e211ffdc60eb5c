"""Exact log-likelihood of label continuations, with the shared prompt prefix encoded once.

For every example ``i`` and choice ``c`` we want ``log p(cont[i][c] | ctx[i])`` summed over the
continuation's tokens, exactly as lm-evaluation-harness defines it (``_encode_pair``: trailing
whitespace of the context moves into the continuation; the continuation's tokens are those of
the joint encoding after the context's). Three passes keep the work close to the minimum:

1. the longest token prefix shared by every context (instruction + demonstrations) runs once;
   its KV cache is reused by every batch;
2. each batch of examples runs only its own suffix, left-padded *between* prefix and suffix
   (an attention mask hides the holes, explicit position ids keep positions exact), followed by
   the tokens all its choices start with; the last position's logits score every choice's first
   distinct token at once;
3. only choices with more tokens after that run again: the batch's cache is expanded to one row
   per (example, choice) and their remaining tokens (all but the last) are fed in one batch.

``score_brute`` is the plain one-forward-per-(example, choice) definition the tests compare to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from peftlab.backbones.kv_cache import cache_kwargs, returned_cache

Ids = list[int]


@dataclass
class Encoded:
    """Token ids of each context and of each of its continuations."""

    contexts: list[Ids]
    continuations: list[list[Ids]]


def split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's rule: whitespace that ends the context belongs to the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def encode_requests(tokenizer, contexts: Sequence[str], choices: Sequence[Sequence[str]]) -> Encoded:
    """Tokenise each context (with the tokenizer's own special tokens) and, like lm-eval, each
    continuation as the tokens that follow the context inside their joint encoding."""
    ctx_ids: list[Ids] = []
    cont_ids: list[list[Ids]] = []
    for context, conts in zip(contexts, choices):
        ctx = split_trailing_space(context, "")[0]
        conts = [split_trailing_space(context, c)[1] for c in conts]
        own = tokenizer(ctx).input_ids
        wholes = tokenizer([ctx + c for c in conts]).input_ids
        # a continuation absorbed into the context's last token (never seen with sane
        # verbalizers) falls back to its own encoding rather than an empty score
        row = [w[len(own):] or tokenizer(c, add_special_tokens=False).input_ids for c, w in zip(conts, wholes)]
        ctx_ids.append(own)
        cont_ids.append(row)
    return Encoded(ctx_ids, cont_ids)


def common_prefix_len(seqs: Sequence[Ids]) -> int:
    """Tokens shared by every sequence, leaving at least one token of each as its own suffix."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _repeat(cache: DynamicCache, n: int) -> DynamicCache:
    """``n`` rows of a one-row cache, as views: the first update concatenates into new memory."""
    return DynamicCache(ddp_cache_data=[(layer.keys.expand(n, -1, -1, -1), layer.values.expand(n, -1, -1, -1))
                                        for layer in cache.layers])


def _select(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding ``rows`` of ``cache`` (repeats allowed); ``cache`` is left untouched."""
    return DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows]) for layer in cache.layers])


def _pad(seqs: Sequence[Ids], pad: int, device: torch.device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``seqs`` padded with ``pad`` to the longest, on the left (so every
    row's last real token is in the last column) or on the right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            cols = slice(width - len(s), width) if left else slice(0, len(s))
            ids[r, cols] = torch.tensor(s, dtype=torch.long)
            mask[r, cols] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor, start: int) -> torch.Tensor:
    """Position of each real token of a left-padded row: ``start`` + its index among real tokens."""
    return (mask.cumsum(-1) - 1).clamp(min=0) + start


class PrefixScorer:
    """Scores (context, continuations) requests against a causal LM; see the module docstring."""

    def __init__(self, model, pad_id: int, batch_size: int = 8, use_prefix_cache: bool = True) -> None:
        self.model = model
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.use_prefix_cache = use_prefix_cache

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def score(self, enc: Encoded) -> list[list[float]]:
        """Summed log-likelihood of every continuation, ``out[i][c]``."""
        self.model.eval()
        n_prefix = common_prefix_len(enc.contexts) if self.use_prefix_cache else 0
        prefix_cache = self._encode_prefix(enc.contexts[0][:n_prefix]) if n_prefix else None
        out: list[list[float]] = [[] for _ in enc.contexts]
        order = sorted(range(len(enc.contexts)), key=lambda i: -len(enc.contexts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            sums = self._score_batch([enc.contexts[i][n_prefix:] for i in idx],
                                     [enc.continuations[i] for i in idx], n_prefix, prefix_cache)
            for i, s in zip(idx, sums):
                out[i] = s
        return out

    def _encode_prefix(self, prefix: Ids) -> DynamicCache:
        ids = torch.tensor([prefix], device=self.device)
        return returned_cache(self.model(input_ids=ids, use_cache=True))

    def _score_batch(self, suffixes: list[Ids], conts: list[list[Ids]], n_prefix: int,
                     prefix_cache: DynamicCache | None) -> list[list[float]]:
        dev = self.device
        b = len(suffixes)
        # tokens every choice of a row starts with (chat answers all open with "\n") are run
        # with the suffix, so usually only the first *distinct* token is left to score
        shared = [shared_len(c) for c in conts]
        ids, smask = _pad([s + c[0][:k] for s, c, k in zip(suffixes, conts, shared)], self.pad_id, dev, left=True)
        attn = torch.cat([torch.ones((b, n_prefix), dtype=torch.long, device=dev), smask], dim=1)
        cache = _repeat(prefix_cache, b) if prefix_cache is not None else DynamicCache()
        keep = max(shared) + 1
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=_positions(smask, n_prefix),
                         **cache_kwargs(cache), use_cache=True, logits_to_keep=keep)
        logp = torch.log_softmax(out.logits[:, -keep:].float(), dim=-1)  # (B, keep, V), rows end-aligned
        sums = []
        for r, (c, k) in enumerate(zip(conts, shared)):
            common = sum(float(logp[r, keep - k + j - 1, c[0][j]]) for j in range(k))
            sums.append([common + float(logp[r, keep - 1, ch[k]]) for ch in c])
        tails = [(r, j) for r in range(b) for j, ch in enumerate(conts[r]) if len(ch) > shared[r] + 1]
        if tails:
            feeds = [conts[r][j][shared[r]:] for r, j in tails]  # from the first distinct token on
            self._add_tails(sums, tails, feeds, returned_cache(out), attn, n_prefix + smask.sum(1))
        return sums

    def _add_tails(self, sums: list[list[float]], rows: list[tuple[int, int]], feeds: list[Ids],
                   cache: DynamicCache, attn: torch.Tensor, next_pos: torch.Tensor) -> None:
        """The remaining tokens of multi-token continuations, one row per (example, choice),
        continuing from the batch's cache: feed tokens t..n-1, score tokens t+1..n."""
        dev = self.device
        step = self.batch_size * 4
        for start in range(0, len(rows), step):
            chunk, tokens = rows[start : start + step], feeds[start : start + step]
            sel = torch.tensor([r for r, _ in chunk], dtype=torch.long, device=dev)
            feed, cmask = _pad([t[:-1] for t in tokens], self.pad_id, dev, left=False)
            out = self.model(input_ids=feed, attention_mask=torch.cat([attn[sel], cmask], dim=1),
                             position_ids=next_pos[sel, None] + torch.arange(feed.shape[1], device=dev),
                             **cache_kwargs(_select(cache, sel)), use_cache=True)
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            for row, ((r, j), t) in enumerate(zip(chunk, tokens)):
                target = torch.tensor(t[1:], device=dev)
                sums[r][j] += float(logp[row, torch.arange(len(target), device=dev), target].sum())


def shared_len(conts: Sequence[Ids]) -> int:
    """Leading tokens common to every continuation, leaving each at least one of its own."""
    n = min(len(c) for c in conts) - 1
    for k in range(max(n, 0)):
        if any(c[k] != conts[0][k] for c in conts):
            return k
    return max(n, 0)


@torch.no_grad()
def score_brute(model, enc: Encoded) -> list[list[float]]:
    """The definition: one unpadded forward pass of context + continuation per choice."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for ctx, conts in zip(enc.contexts, enc.continuations):
        row = []
        for cont in conts:
            ids = torch.tensor([ctx + cont], device=dev)
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=dev)
            row.append(float(logp[pos, torch.tensor(cont, device=dev)].sum()))
        out.append(row)
    return out
