"""lm_lora's answer-only output head (peftlab.methods.lm_lora.answer_loss) against HF's full-head loss: the
same loss, the same LoRA gradients, the same training run, on a tiny random Llama."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import LlamaForCausalLM

from conftest import tiny_config
from peftlab.config import TrainConfig
from peftlab.methods.lm_lora import accepts_logits_to_keep, answer_loss, answer_positions, full_head_loss
from peftlab.methods.lm_lora import LmLoraParams
from peftlab.runners import lm_fit
from peftlab.runners.lm_fit import _batch, train_verbalizer
from peftlab.backbones.precision import Precision

# (prompt ids, answer ids): prompt lengths 3..9, answers of 1 to 3 tokens
ROWS = [([4, 10, 11, 12], [20]), ([4, 13, 14, 15, 16, 17, 18, 19, 10], [21, 22, 23]),
        ([4, 11, 12], [22, 24]), ([4, 15, 16, 17, 18, 19], [23])]


def _lora_llama(seed: int = 0, base=None):
    torch.manual_seed(seed)
    base = base if base is not None else LlamaForCausalLM(tiny_config("llama"))
    conf = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, conf)
    with torch.no_grad():  # B starts at zero; make the adapters do something
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return model


def _lora_grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_answer_positions_are_the_shifted_labels():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 9, -100, -100, -100]])
    keep, targets = answer_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, False, False, False, False]]
    assert targets.tolist() == [7, 8, 9]


def _check_equal_to_full_head(model) -> None:
    assert accepts_logits_to_keep(model)
    batch = _batch(ROWS, pad=0, device=torch.device("cpu"))
    assert batch["attention_mask"].sum(1).unique().numel() > 2  # really different lengths
    full = full_head_loss(model, batch)
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    fast = answer_loss(model, batch)
    hook.remove()
    assert seen == [torch.Size([sum(len(a) for _, a in ROWS), model.config.hidden_size])]  # the head ran on answers only
    assert fast.item() == pytest.approx(full.item(), abs=1e-5)
    g_full, g_fast = _lora_grads(model, full), _lora_grads(model, fast)
    assert g_full.keys() == g_fast.keys() and all("lora_" in n for n in g_full)
    assert any(g.abs().max() > 1e-4 for g in g_full.values())
    for n in g_full:
        torch.testing.assert_close(g_fast[n], g_full[n], atol=1e-5, rtol=1e-5, msg=n)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)  # the base stays frozen


def test_loss_and_lora_gradients_equal_the_full_head():
    _check_equal_to_full_head(_lora_llama())


def test_the_same_on_a_4bit_base(tmp_path):
    """QLoRA (lm_lora with quantize: 4bit): 4-bit body, fp32 head, the same loss and gradients."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    from conftest import make_tokenizer
    from peftlab.config import BackboneConfig
    from peftlab.backbones.causal_lm import load_causal_lm

    torch.manual_seed(5)
    LlamaForCausalLM(tiny_config("llama")).save_pretrained(str(tmp_path))
    make_tokenizer(tmp_path, with_cls=False)
    base = load_causal_lm(BackboneConfig(name=str(tmp_path)), "4bit", torch.device("cpu"))
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    _check_equal_to_full_head(_lora_llama(base=base))


def test_loss_is_a_token_mean_over_the_batch():
    """Not a mean of per-example means: the 3-token answer weighs three times a 1-token one."""
    model = _lora_llama()
    batch = _batch(ROWS, pad=0, device=torch.device("cpu"))
    per_row = [answer_loss(model, _batch([r], 0, torch.device("cpu"))).item() for r in ROWS]
    counts = [len(a) for _, a in ROWS]
    token_mean = sum(loss * n for loss, n in zip(per_row, counts)) / sum(counts)
    assert answer_loss(model, batch).item() == pytest.approx(token_mean, abs=1e-5)
    assert token_mean != pytest.approx(sum(per_row) / len(per_row), abs=1e-3)


def test_a_model_without_logits_to_keep_gets_the_full_head():
    class Plain(torch.nn.Module):
        def forward(self, input_ids, attention_mask, labels):
            return SimpleNamespace(loss=torch.tensor(1.25))

    assert not accepts_logits_to_keep(Plain())
    assert answer_loss(Plain(), _batch(ROWS, 0, torch.device("cpu"))).item() == 1.25


def test_a_model_that_ignores_a_boolean_logits_to_keep_gets_the_full_head():
    """An architecture that takes ``logits_to_keep`` but returns every position's logits."""
    llama = _lora_llama()

    class AllPositions(torch.nn.Module):
        def forward(self, input_ids, attention_mask, labels=None, logits_to_keep=0, use_cache=None):
            return llama(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    batch = _batch(ROWS, 0, torch.device("cpu"))
    assert answer_loss(AllPositions(), batch).item() == pytest.approx(full_head_loss(llama, batch).item(), abs=1e-6)


def _train(loss_fn, monkeypatch) -> tuple[object, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model = _lora_llama(seed=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    monkeypatch.setattr(lm_fit, "training_rows", lambda ctx: ROWS * 3)
    ctx = SimpleNamespace(cfg=SimpleNamespace(train=TrainConfig(epochs=2, batch_size=4, seed=0)),
                          prompting=SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0)),
                          device=torch.device("cpu"), precision=Precision("fp32", "test"))
    out = train_verbalizer(model, LmLoraParams(lr=1e-2), ctx, loss_fn=loss_fn)
    return out, before, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_training_moves_lora_only_and_matches_the_full_head_run(monkeypatch):
    fast, before, after = _train(answer_loss, monkeypatch)
    full, _, after_full = _train(full_head_loss, monkeypatch)
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert moved and all("lora_" in n for n in moved)
    assert fast.train_examples == full.train_examples == 2 * len(ROWS) * 3 and not fast.nan_loss
    for a, b in zip(fast.epochs, full.epochs):
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-5)
    assert fast.epochs[1].train_loss < fast.epochs[0].train_loss  # it learns
    for n in moved:
        torch.testing.assert_close(after[n], after_full[n], atol=1e-5, rtol=1e-4, msg=n)
