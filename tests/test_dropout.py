"""peftlab.runners.dropout: the same distribution as torch's dropout, gradients through the mask,
seeded repeatability, and the switch undone after training."""

from __future__ import annotations

import torch
from torch import nn

from peftlab.runners.dropout import drop_threshold, dropout, fast_dropout, keep_mask, keep_scale


def test_threshold_and_scale_by_hand():
    assert drop_threshold(0.5) == 0  # half of the signed 16-bit values are below 0
    assert drop_threshold(0.1) == 6554 - 32768
    assert keep_scale(0.5) == 2.0


def test_every_16_bit_chunk_drops_at_rate_p():
    torch.manual_seed(0)
    m = keep_mask(torch.Size([400_000]), 0.3, torch.device("cpu")).float()
    for i in range(4):  # each 16-bit part of the 64-bit draws is uniform
        assert abs(m[i::4].mean().item() - 0.7) < 0.005


def test_unbiased_and_gradient_follows_the_mask():
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.2)
    kept = y != 0
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], keep_scale(0.2)))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)


def test_seeded_repeat_and_identity_in_eval():
    x = torch.randn(64, 16)
    torch.manual_seed(3)
    a = dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.1))
    assert dropout(x, 0.1, training=False) is x


def test_fast_dropout_switches_plain_dropouts_and_restores_them():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Sequential(nn.Dropout(0.1)))
    x = torch.ones(1000, 4)
    with fast_dropout(model, torch.device("cpu")) as n:
        assert n == 2
        torch.manual_seed(0)
        inside = model(x)
    assert "forward" not in vars(model[1])  # the class's own forward is back
    torch.manual_seed(0)
    assert not torch.equal(inside, model(x))  # torch's dropout draws other masks
    with fast_dropout(model, torch.device("meta")) as n:  # not CPU: untouched
        assert n == 0
