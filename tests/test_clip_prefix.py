"""CoOp's shared-prefix text tower (peftlab/images/clip_prefix.py) against the plain batched forward."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_images import make_tiny_clip

from peftlab.config import BackboneConfig
from peftlab.images.backbones import load_image_backbone
from peftlab.images.clip_prefix import packed_layout, pool_positions
from peftlab.images.methods_clip import PromptLearner
from peftlab.methods.clip_methods import CoopParams

# names of 1, 2 and 3 words: the prompts differ in length, so the batch is padded after EOS
NAMES = ["cat", "big dog", "small blurry car"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    return load_image_backbone(BackboneConfig(name=make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))))


def _features_and_grad(clip, n_ctx: int, ctx_init: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    learner = PromptLearner(clip, NAMES, CoopParams(n_ctx=n_ctx, ctx_init=ctx_init), seed=3)
    with torch.no_grad():
        learner.ctx.add_(torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    feats = learner.text_features()
    weights = torch.randn(feats.shape, generator=torch.Generator().manual_seed(2))
    (feats * weights).sum().backward()
    return feats.detach(), learner.ctx.grad.clone()


@pytest.mark.parametrize("n_ctx, ctx_init", [(3, None), (4, "a photo of a"), (16, None)])
def test_shared_prefix_equals_the_plain_forward_values_and_gradients(clip, n_ctx, ctx_init):
    assert clip.encode_text_shared_prefix is not None  # the HF CLIP tower is handled
    plain = dataclasses.replace(clip, encode_text_shared_prefix=None)
    f_shared, g_shared = _features_and_grad(clip, n_ctx, ctx_init)
    f_plain, g_plain = _features_and_grad(plain, n_ctx, ctx_init)
    assert torch.allclose(f_shared, f_plain, atol=1e-5), (f_shared - f_plain).abs().max()
    assert torch.allclose(g_shared, g_plain, atol=1e-5, rtol=1e-4), (g_shared - g_plain).abs().max()
    assert g_plain.abs().max() > 1e-4  # the context does receive a gradient


def test_shared_prefix_runs_the_prefix_once(clip):
    """The text tower's first projection sees the prefix once and each prompt up to its EOS (no
    padding), instead of every padded prompt whole."""
    rows: list[int] = []
    q = clip.model.text_model.encoder.layers[0].self_attn.q_proj
    handle = q.register_forward_hook(lambda _m, args, _out: rows.append(args[0].numel() // args[0].shape[-1]))
    learner = PromptLearner(clip, NAMES, CoopParams(n_ctx=16, ctx_init=None), seed=0)
    try:
        with torch.no_grad():
            learner.text_features()
            PromptLearner(dataclasses.replace(clip, encode_text_shared_prefix=None), NAMES,
                          CoopParams(n_ctx=16, ctx_init=None), seed=0).text_features()
    finally:
        handle.remove()
    prefix, length = 1 + 16, learner.ids.shape[1]
    own = [2 + len(name.split()) for name in NAMES]  # name words, ".", EOS
    assert length == prefix + max(own)
    assert rows == [prefix + sum(own), len(NAMES) * length]


def test_class_specific_context_keeps_the_plain_path(clip):
    """Each class has its own context, so there is no shared prefix: features still match the hook path."""
    params = CoopParams(n_ctx=3, ctx_init=None, class_specific=True)
    a = PromptLearner(clip, NAMES, params, seed=0)
    b = PromptLearner(dataclasses.replace(clip, encode_text_shared_prefix=None), NAMES, params, seed=0)
    with torch.no_grad():
        assert torch.equal(a.text_features(), b.text_features())


def test_pool_positions_follow_transformers_rule():
    ids = torch.tensor([[2, 5, 9, 3, 0], [2, 3, 0, 0, 0]])
    assert pool_positions(ids, eos_token_id=3).tolist() == [3, 1]
    # old configs (eos_token_id == 2) take the highest id, as CLIPTextModel does
    assert pool_positions(torch.tensor([[5, 7, 49407, 0]]), eos_token_id=2).tolist() == [2]


def test_packed_layout_masks_each_prompt_to_the_prefix_and_itself():
    pos, allowed, eos = packed_layout(2, [3, 4])  # prefix rows 0-1; prompt 0: position 2-3; prompt 1: 2-4
    assert pos.tolist() == [0, 1, 2, 3, 2, 3, 4]
    assert eos.tolist() == [3, 6]
    want = [[1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],
            [1, 1, 0, 0, 1, 1, 0],
            [1, 1, 0, 0, 1, 1, 1]]
    assert allowed.int().tolist() == want
