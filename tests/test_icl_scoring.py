"""Choice log-likelihoods on a tiny random Llama: prefix-cached == uncached == brute force."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import WORDS, make_tokenizer, tiny_config
from peftlab.icl.scoring import (
    Encoded, PrefixScorer, common_prefix_len, encode_requests, score_brute, split_trailing_space,
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama")).eval()
    tok = make_tokenizer(tmp_path_factory.mktemp("tok"), with_cls=False)
    return model, tok


def _requests(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    shared = "the drug was very good so the drug was bad it"  # instruction + demonstrations
    contexts = [shared + " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 9))) for _ in range(n)]
    # single- and multi-token choices of different lengths, as verbalizers can be
    choices = [[" good", " not very good", " meh okay"] for _ in range(n)]
    return contexts, choices


def test_prefix_cache_equals_uncached_equals_brute_force(tiny_lm):
    model, tok = tiny_lm
    enc = encode_requests(tok, *_requests(7, 0))
    assert common_prefix_len(enc.contexts) >= 10
    brute = torch.tensor(score_brute(model, enc))
    cached = torch.tensor(PrefixScorer(model, pad_id=0, batch_size=3).score(enc))
    uncached = torch.tensor(PrefixScorer(model, pad_id=0, batch_size=3, use_prefix_cache=False).score(enc))
    assert brute.shape == (7, 3)
    torch.testing.assert_close(cached, brute, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(uncached, brute, atol=1e-4, rtol=1e-5)
    # the choices really differ (a constant scorer could not pass)
    assert (brute[:, 0] - brute[:, 1]).abs().min() > 1e-3


def test_batch_size_one_and_ragged_suffixes_agree(tiny_lm):
    model, tok = tiny_lm
    enc = encode_requests(tok, *_requests(5, 1))
    a = PrefixScorer(model, pad_id=0, batch_size=1).score(enc)
    b = PrefixScorer(model, pad_id=0, batch_size=5).score(enc)
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=1e-5)


def test_multi_token_continuation_is_sum_of_its_tokens(tiny_lm):
    model, tok = tiny_lm
    enc = encode_requests(tok, ["the drug was"], [[" not very good"]])
    assert len(enc.continuations[0][0]) == 3
    ids = enc.contexts[0] + enc.continuations[0][0]
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    n = len(enc.contexts[0])
    manual = sum(float(logp[n - 1 + j, ids[n + j]]) for j in range(3))
    assert PrefixScorer(model, pad_id=0).score(enc)[0][0] == pytest.approx(manual, abs=1e-4)


def test_trailing_space_moves_to_continuation():
    assert split_trailing_space("Answer: ", "yes") == ("Answer:", " yes")
    assert split_trailing_space("Answer:", " yes") == ("Answer:", " yes")


def test_common_prefix_leaves_one_token_per_suffix():
    assert common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_len([[7], [1, 2]]) == 0
    assert common_prefix_len(Encoded([[1]], [[[2]]]).contexts) == 0


def test_choices_sharing_leading_tokens(tiny_lm):
    """Chat answers all start with the same token(s); the shared part runs with the suffix."""
    model, tok = tiny_lm
    contexts, _ = _requests(6, 2)
    choices = [[" the drug good", " the drug not very bad", " the good"]] * 6
    enc = encode_requests(tok, contexts, choices)
    brute = torch.tensor(score_brute(model, enc))
    cached = torch.tensor(PrefixScorer(model, pad_id=0, batch_size=4).score(enc))
    torch.testing.assert_close(cached, brute, atol=1e-4, rtol=1e-5)
    from peftlab.icl.scoring import shared_len
    assert shared_len(enc.continuations[0]) == 1
    assert shared_len([[1, 2], [1, 2]]) == 1 and shared_len([[1], [1, 2]]) == 0
