"""The method table: every method on tiny random models. Adding a method = its module + one row of ``TABLE``.

For each row: counted trainable/total == closed form (BERT, RoBERTa, Llama); a few epochs lower the
loss; exactly the intended parameters change; save -> load on a fresh base gives the same logits,
which differ from the untouched base model. Rows of peft methods (``PeftMethod``): plain peft's
``PeftModel.from_pretrained`` loads the saved adapter on the original base with the same outputs,
and merged == unmerged where the method merges (``merges``) on a base it does not quantise. Rows
whose method loads its base quantised (qlora's ``load_kwargs``): after training the base is still
quantised and frozen. What each row expects comes from its method's declarations; the one thing
they cannot say (a reload equal to float rounding, not bit for bit) is the row's ``reload_atol``.
The LoRA family's options (issue 20) and some methods have tests of their own below the table's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import DataCollatorWithPadding

from conftest import FAMILIES
from method_table import _one_thread, assert_counts_match_closed_form, fresh, split, train_tiny  # noqa: F401  (_one_thread: autouse)
from peftlab.estimate.params import all_linears, arch_spec, base_weight_bytes, count_params
from peftlab.infra.errors import PeftlabError
from peftlab.methods import METHODS
from peftlab.methods.base import DEFAULT_HEADS
from peftlab.methods.lora import LoraParams
from peftlab.methods.peft_common import PeftMethod
from peftlab.runners.batching import encode
from peftlab.runners.train import make_optimizer, predict_logits


@dataclass(frozen=True)
class Row:
    """A method and its params (learning rates high enough to move a tiny model in a few epochs)."""

    method: str
    params: dict[str, Any]
    #: None: a reloaded adapter (peftlab's own load, and plain peft's) gives bit-identical logits;
    #: else they agree to this absolute tolerance (rtol 1e-5) with the same predictions. The row says why.
    reload_atol: float | None = None


LORA = {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0}
#: saved as a plain LoRA adapter on the untouched base (rank 2r: [B | -B0][A; A0]); the reloaded
#: model computes W x + s B'A' x instead of (W - s B0 A0) x + s B A x, equal to float rounding
CONVERTED = 1e-5
#: saved with only the ranks that survived pruning (AdaLoRA's rank pattern): the reloaded product
#: leaves out the pruned (zero) terms, so it sums in another order, equal to float rounding
PRUNED = 1e-5
#: prompts from a trained encoder: peft saves the encoder's *output* (the encoder is a training-time
#: reparameterisation), so a reload skips one batched matmul chain and can differ in the last float bits
ENCODER = 1e-6
TABLE: dict[str, Row] = {
    "full": Row("full", {"lr": 3e-3}),
    "partial": Row("partial", {"lr": 3e-3, "top_k": 1}),
    "linear_probe": Row("linear_probe", {"lr": 5e-2}),
    "lora": Row("lora", LORA),
    "lora_rslora": Row("lora", {**LORA, "use_rslora": True}),
    "lora_dora": Row("lora", {**LORA, "use_dora": True}),
    "lora_gaussian": Row("lora", {**LORA, "init": "gaussian"}),
    "lora_pissa": Row("lora", {**LORA, "init": "pissa"}, reload_atol=CONVERTED),
    "lora_olora": Row("lora", {**LORA, "init": "olora"}, reload_atol=CONVERTED),
    "lora_plus": Row("lora", {**LORA, "lr": 3e-3, "lora_plus_ratio": 16}),
    "lora_all_linear": Row("lora", {**LORA, "target_modules": "all-linear"}),
    "lora_pissa_dora_rslora": Row("lora", {**LORA, "init": "pissa", "use_dora": True, "use_rslora": True},
                                  reload_atol=CONVERTED),
    # the LoRA family's options on a quantised base too (issue 20)
    "qlora": Row("qlora", LORA),
    "qlora8": Row("qlora", {**LORA, "bits": 8}),
    "qlora_dora": Row("qlora", {**LORA, "use_dora": True}),
    "qlora_rslora_plus": Row("qlora", {**LORA, "lr": 3e-3, "use_rslora": True, "lora_plus_ratio": 16}),
    "qlora_all_linear": Row("qlora", {**LORA, "target_modules": "all-linear"}),
    "vera": Row("vera", {"lr": 3e-2, "r": 8}),
    "loha": Row("loha", {"lr": 1e-2, "r": 4}),
    "lokr": Row("lokr", {"lr": 1e-2, "r": 2}),
    "ln_tuning": Row("ln_tuning", {"lr": 3e-2}),
    "oft": Row("oft", {"lr": 1e-2, "block_size": 8}),
    "boft": Row("boft", {"lr": 1e-2, "block_size": 4}),
    "fourierft": Row("fourierft", {"lr": 1e-2, "n_frequency": 64}),
    "hra": Row("hra", {"lr": 1e-2, "r": 4}),
    "adalora": Row("adalora", {"lr": 1e-2, "init_r": 4, "target_r": 3}, reload_atol=PRUNED),
    "ia3": Row("ia3", {"lr": 3e-2}),
    "prompt_tuning": Row("prompt_tuning", {"lr": 1e-2, "num_virtual_tokens": 4}),
    "prompt_tuning_random": Row("prompt_tuning", {"lr": 3e-2, "num_virtual_tokens": 3, "init": "random"}),
    "p_tuning": Row("p_tuning", {"lr": 1e-2, "num_virtual_tokens": 4, "encoder_hidden_size": 16}, reload_atol=ENCODER),
    "p_tuning_lstm": Row("p_tuning", {"lr": 1e-2, "num_virtual_tokens": 3, "encoder": "lstm", "encoder_hidden_size": 8},
                         reload_atol=ENCODER),
    "prefix_tuning": Row("prefix_tuning", {"lr": 3e-2, "num_virtual_tokens": 4}),
    "prefix_tuning_proj": Row("prefix_tuning", {"lr": 1e-2, "num_virtual_tokens": 3, "projection": True,
                                                "encoder_hidden_size": 16}, reload_atol=ENCODER),
    "houlsby": Row("houlsby", {"lr": 1e-2, "bottleneck_size": 4}),
    "pfeiffer": Row("pfeiffer", {"lr": 1e-2, "reduction_factor": 8, "nonlinearity": "gelu"}),
    # the generic row: any peft type by name, its config fields as the row's keys (issue 20 item 5)
    "peft_hra": Row("peft", {"lr": 1e-2, "peft_type": "HRA", "r": 4, "target_modules": ["query", "value", "q_proj",
                                                                                       "v_proj"]}),
}


def method_and_params(row: str) -> tuple[Any, Any]:
    method = METHODS.get(TABLE[row].method)
    return method, method.Params(**TABLE[row].params)


def quantised(row: str) -> bool:
    """The row's method loads its base quantised (its ``load_kwargs`` carry a quantization config)."""
    method, params = method_and_params(row)
    return "quantization_config" in method.load_kwargs(params, DEFAULT_HEADS)


#: rows of peft methods: plain peft loads what they save
PEFT_ROWS = [row for row in TABLE if isinstance(METHODS.get(TABLE[row].method), PeftMethod)]
#: of those, the rows whose update folds into the base weights; not into a quantised one, which
#: would be re-quantised (``peftlab predict`` keeps those unmerged too)
MERGED_ROWS = [row for row in PEFT_ROWS if METHODS.get(TABLE[row].method).merges and not quantised(row)]


def assert_same_logits(row: str, got: Any, want: Any) -> None:
    """Identical logits, or within the row's ``reload_atol`` and the same predictions."""
    got, want = np.asarray(got), np.asarray(want)
    if TABLE[row].reload_atol is None:
        assert np.array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=TABLE[row].reload_atol)
        assert np.array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("row", list(TABLE))
def test_counted_equals_closed_form(tiny_backbones, family, row):
    method, params = method_and_params(row)
    model, _ = fresh(tiny_backbones[family], method, params)
    assert_counts_match_closed_form(method, params, model)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("row", list(TABLE))
def test_trains_only_its_parameters_and_round_trips(tiny_backbones, tmp_path: Path, family, row):
    method, params = method_and_params(row)
    model, tok = fresh(tiny_backbones[family], method, params)
    base_model, _ = fresh(tiny_backbones[family])
    run = train_tiny(method, params, model, tok, epochs=6)
    run.assert_trained_exactly_intended()
    model, spec = run.model, run.spec
    if quantised(row):  # after training the base is still quantised, frozen, untouched
        quant = [p for p in model.parameters() if type(p).__name__ in ("Params4bit", "Int8Params")]
        assert len(quant) == len(all_linears(spec))  # every block linear (the pooler is part of the head, kept in full precision)
        assert not any(p.requires_grad for p in quant)

    method.save(model, params, tmp_path / "adapter")
    reloaded, _ = fresh(tiny_backbones[family], method, params)
    reloaded = method.load(reloaded, params, spec, tmp_path / "adapter")
    trained_logits = run.logits(model)
    assert_same_logits(row, run.logits(reloaded), trained_logits)
    assert not np.allclose(run.logits(base_model), trained_logits)


def _moved(path: str, row: str, std: float) -> tuple[Any, Any, Any, Any]:
    """A prepared row whose trained tensors are moved away from their init (LoRA's B, VeRA's
    lambda_b start at 0: an identity init could pass the comparisons trivially)."""
    method, params = method_and_params(row)
    model, tok = fresh(path, method, params)
    model = method.prepare(model, params, arch_spec(model.config))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * std)
    return method, params, model.eval(), tok


@pytest.mark.parametrize("row", PEFT_ROWS)
def test_peft_adapter_loads_in_plain_peft(tiny_bert, tmp_path: Path, row):
    """On the *original* base: PiSSA/OLoRA rows are saved converted, so no init is recomputed."""
    from peft import PeftModel

    from peftlab.backbones.kv_cache import CACHE_ARG, route_prefix_cache
    from peftlab.methods.qlora import disable_cpu_repacking

    method, params, model, tok = _moved(tiny_bert, row, 0.5)
    method.save(model, params, tmp_path / "a")
    if isinstance(params, LoraParams):  # the LoRA family (qlora too)
        saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text(encoding="utf-8"))
        # loading rewrites no base weight (converted rows: a plain rank-2r LoRA adapter)
        assert saved["init_lora_weights"] not in ("pissa", "olora")
        assert saved["r"] == params.r * (2 if params.init in ("pissa", "olora") else 1)
    base, _ = fresh(tiny_bert, method, params)
    # peftlab's own setting for quantised bases (bitsandbytes' CPU fast path changes numerics)
    disable_cpu_repacking(base)
    plain = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    if method.name == "prefix_tuning" and CACHE_ARG == "cache":
        # peft 0.21's own prefix forward looks for `past_key_values`, which transformers >= 5.24
        # calls `cache`: the adapter loads in plain peft; its forward needs peftlab's routing
        route_prefix_cache(plain)
    batch = tok(["good drug", "bad day really"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert_same_logits(row, plain(**batch).logits, model(**batch).logits)
        untouched, _ = fresh(tiny_bert)
        assert not torch.allclose(untouched.eval()(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("row", MERGED_ROWS)
def test_merged_equals_unmerged(tiny_bert, row):
    method, params, model, tok = _moved(tiny_bert, row, 0.5)
    batch = tok(["good drug", "bad day really"], return_tensors="pt", padding=True)
    with torch.no_grad():
        unmerged = model(**batch).logits
        merged = model.merge_and_unload()(**batch).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    base, _ = fresh(tiny_bert)
    assert not torch.allclose(base.eval()(**batch).logits, unmerged)


#: what each LoRA option changes in the prepared model, beyond the counts (row -> check)
OPTION_CHECKS = {
    # rsLoRA: B A scaled by alpha / sqrt(r) = 8 / 2, not alpha / r = 2
    "lora_rslora": lambda model, base: {m.scaling["default"] for m in _lora_layers(model)} == {4.0},
    # gaussian: A ~ N(0, 1/r^2), far below kaiming-uniform's 1/sqrt(d_in)-wide spread
    "lora_gaussian": lambda model, base: all(abs(m.lora_A["default"].weight.std().item() - 0.25) < 0.05
                                             for m in _lora_layers(model)),
    # PiSSA / OLoRA: B starts non-zero and the base weight becomes the residual W - s B0 A0
    "lora_pissa": lambda model, base: _residual_base(model, base),
    "lora_olora": lambda model, base: _residual_base(model, base),
}


def _lora_layers(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]


def _residual_base(model: Any, base: Any) -> bool:
    originals = dict(base.named_parameters())
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            w0 = originals[name.removeprefix("base_model.model.") + ".weight"]
            delta = m.scaling["default"] * m.lora_B["default"].weight @ m.lora_A["default"].weight
            if not (delta.abs().max() > 0 and torch.allclose(m.base_layer.weight + delta, w0, atol=1e-5)):
                return False
    return True


@pytest.mark.parametrize("row", list(OPTION_CHECKS))
def test_lora_option_reaches_peft(tiny_bert, row):
    method, params = method_and_params(row)
    base, _ = fresh(tiny_bert)
    model, _ = fresh(tiny_bert)
    model = method.prepare(model, params, arch_spec(model.config))
    assert OPTION_CHECKS[row](model, base)


def test_lora_plus_b_learns_ratio_times_faster(tiny_bert):
    """LoRA+: every B matrix sits in an optimizer group at lr * ratio; A and the head at lr."""
    from peftlab.config import TrainConfig

    method, params = method_and_params("lora_plus")
    model, _ = fresh(tiny_bert)
    model = method.prepare(model, params, arch_spec(model.config))
    opt, _ = make_optimizer(model, params.lr, TrainConfig(warmup_ratio=0.0), 10,
                            lr_scale=lambda name: method.lr_scale(params, name))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(lr_of) == len(trainable)
    for name, p in trainable.items():
        want = params.lr * params.lora_plus_ratio if ".lora_B." in name else params.lr
        assert lr_of[id(p)] == pytest.approx(want), name
    assert any(".lora_B." in n for n in trainable)


def test_adalora_prunes_to_its_budget_over_the_runs_steps(tiny_bert, tmp_path: Path):
    """The training loop's step hook gives peft the run's optimizer steps (48 rows / 8 x 2 epochs)
    and allocates after each: the saved rank pattern keeps target_r ranks per linear on average."""
    method, params = method_and_params("adalora")
    model, tok = fresh(tiny_bert)
    run = train_tiny(method, params, model, tok, epochs=2)
    method.save(run.model, params, tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text(encoding="utf-8"))
    assert saved["total_step"] == 12
    assert (saved["tinit"], saved["tfinal"]) == (int(params.tinit * 12), int(params.tfinal * 12))
    pattern = saved["rank_pattern"]
    assert len(pattern) == 4  # query and value of both blocks
    assert sum(sum(kept) for kept in pattern.values()) == params.target_r * len(pattern)


@pytest.mark.parametrize(("row", "error"), [
    ({"peft_type": "HRA", "rr": 2}, r"methods\[0\]: rr: not a field of peft's HRAConfig"),
    ({"peft_type": "HRX"}, r"methods\[0\]: peft_type: 'HRX' is not a peft type"),
    ({"peft_type": "HRA", "modules_to_save": ["x"]}, r"methods\[0\]: modules_to_save: set by peftlab"),
    ({"peft_type": "adalora", "total_step": 10}, r"methods\[0\]: peft_type: ADALORA runs as method: adalora"),
])
def test_generic_peft_row_takes_only_its_config_class_fields(row, error):
    """Checked when the config is read, before any model loads (the CLI: one line, exit 2)."""
    from peftlab.config import validate_raw
    from peftlab.infra.errors import PeftlabError

    raw = {"backbone": "x", "task": {"source": "builtin", "name": "drugreview"}}
    with pytest.raises(PeftlabError, match=error):
        validate_raw({**raw, "methods": [{"method": "peft", **row}]})
    params = validate_raw({**raw, "methods": [{"method": "peft", "peft_type": "hra", "r": 4}]}).methods[0]
    assert (params.config_fields, params.label) == ({"r": 4}, "peft-hra")


def test_generic_peft_row_has_no_closed_form_and_no_plan_estimate(tiny_bert):
    from peftlab.estimate.plan import NoEstimate, plan_method

    method, params = method_and_params("peft_hra")
    model, _ = fresh(tiny_bert)
    spec = arch_spec(model.config)
    assert method.derived_trainable(params, spec) is None
    with pytest.raises(NoEstimate):
        plan_method(params, spec, model.config, 4, 16, overhead=0)


def test_linear_probe_cached_features_equal_recomputed(tiny_backbones):
    """The head trained on the cache gives the same logits as the full model forward."""
    from peftlab.runners.cached import head_inputs

    for family in ("bert", "roberta", "llama"):
        model, tok = fresh(tiny_backbones[family])
        spec = arch_spec(model.config)
        model = METHODS.get("linear_probe").prepare(model, None, spec).eval()
        feats = encode(tok, split(10, 3), 32)
        collate = DataCollatorWithPadding(tok)
        head = model.get_submodule(spec.head_modules[-1])  # the probe trains the last head module
        x = head_inputs(model, head, feats, collate, 4, torch.device("cpu"), spec.is_decoder)
        with torch.no_grad():
            cached = head(x).numpy()
        full = predict_logits(model, feats, collate, 3, torch.device("cpu"))
        np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-6)


def test_registration_refuses_a_method_that_declares_no_flow():
    """A method that leaves its activation flow to the base class is refused when registered,
    never planned as something it is not (issue 20)."""
    from peftlab.methods import register
    from peftlab.methods.base import Method
    from peftlab.methods.full import FullParams

    class NoFlow(Method):
        name = "full"
        Params = FullParams

        def derived_trainable(self, params: Any, spec: Any) -> int:
            return 0

    with pytest.raises(TypeError, match="does not declare flow"):
        register(NoFlow())


def test_every_text_method_has_a_row():
    """Adding a method = its module + a row here: a registered method that trains text classifiers
    without a row of TABLE would go untested (image and in-context methods have their own tests)."""
    text = {n for n in METHODS.names() if METHODS.get(n).runner == "train" and "text" in METHODS.get(n).runs_on}
    assert text - {row.method for row in TABLE.values()} == set()


def test_registration_refuses_an_inherited_readme_row():
    """qlora is a lora but has its own README row: a subclass must state its own."""
    from peftlab.methods import register
    from peftlab.methods.lora import Lora, LoraParams

    class Copy(Lora):
        name = "lora"
        Params = LoraParams

    with pytest.raises(TypeError, match="does not declare readme"):
        register(Copy())


def test_methods_are_found_in_their_own_modules_in_the_tables_order():
    """No list of methods is kept: every module of peftlab/methods but the helpers registers its
    ``REGISTERED`` classes, in ``table_order`` (issue 20: adding a method is adding its module)."""
    import pkgutil

    import peftlab.methods as package
    from peftlab.methods import HELPERS

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - HELPERS
    assert {type(m).__module__.split(".")[2] for m in METHODS.in_order()} == modules  # a module, or a folder
    orders = [(m.table_order, m.name) for m in METHODS.in_order()]
    assert orders == sorted(orders)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_base_stays_quantised_and_frozen(tiny_backbones, bits):
    method = METHODS.get("qlora")
    params = method.Params(r=4, alpha=8, bits=bits)
    fp32, _ = fresh(tiny_backbones["bert"])
    model, _ = fresh(tiny_backbones["bert"], method, params)
    qtype = "Params4bit" if bits == 4 else "Int8Params"
    stored = base_weight_bytes(model)
    model = method.prepare(model, params, arch_spec(model.config))
    linears = {n: p for n, p in model.named_parameters() if "encoder.layer" in n and n.endswith("dense.weight")
               or n.endswith(("query.base_layer.weight", "key.weight", "value.base_layer.weight"))}
    assert linears and {type(p).__name__ for p in linears.values()} == {qtype}
    assert not any(p.requires_grad for p in linears.values())
    # the head is kept out of quantisation and trains in fp32
    heads = [p for n, p in model.named_parameters() if "classifier.modules_to_save" in n]
    assert heads and all(p.requires_grad and p.dtype == torch.float32 for p in heads)
    # logical totals equal fp32's, memory does not
    assert count_params(fp32)[1] + method.derived_trainable(params, arch_spec(fp32.config)) == count_params(model)[1]
    assert stored < base_weight_bytes(fp32)


def test_qlora_refuses_unquantised_base(tiny_bert):
    method = METHODS.get("qlora")
    params = method.Params()
    model, _ = fresh(tiny_bert)
    with pytest.raises(PeftlabError, match="not quantised"):
        method.prepare(model, params, arch_spec(model.config))


def test_base_weight_bytes_fp32(tiny_bert):
    model, _ = fresh(tiny_bert)
    assert base_weight_bytes(model) == 4 * count_params(model)[1]


@pytest.mark.parametrize("name", ["houlsby", "pfeiffer"])
def test_bottleneck_params_validation_and_mismatched_reload(tiny_bert, tmp_path: Path, name):
    method = METHODS.get(name)
    with pytest.raises(ValueError, match="exactly one"):
        method.Params(bottleneck_size=4, reduction_factor=8)
    model, _ = fresh(tiny_bert)
    spec = arch_spec(model.config)
    model = method.prepare(model, method.Params(bottleneck_size=4), spec)
    method.save(model, method.Params(bottleneck_size=4), tmp_path / "a")
    other, _ = fresh(tiny_bert)
    with pytest.raises(PeftlabError, match="differ"):
        method.load(other, method.Params(bottleneck_size=2), spec, tmp_path / "a")
    with pytest.raises(PeftlabError, match="no saved head"):
        fresh_model, _ = fresh(tiny_bert)
        method.load(fresh_model, method.Params(bottleneck_size=4), spec, tmp_path / "missing")


def test_ia3_refuses_feedforward_outside_targets():
    method = METHODS.get("ia3")
    params = method.Params(target_modules=["key"], feedforward_modules=["output.dense"])
    with pytest.raises(PeftlabError, match="not in target_modules"):
        method.check(params, None, "bert")
