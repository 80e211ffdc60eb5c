"""``lora``: low-rank updates W + (alpha/r) * B A on chosen linear layers, through Hugging Face peft.

The head is trained too (peft's ``modules_to_save``), since a new task needs a new head. Saved
in peft's own format, so plain ``PeftModel.from_pretrained`` loads it on the original base;
prepare/load are the shared :class:`~peftlab.methods.peft_common.PeftMethod` ones.

The LoRA family is options of this method, each a field peft already has:

* ``use_rslora``: rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski, 2023);
* ``use_dora``: DoRA's weight decomposition (Liu et al., 2024), one trained magnitude per output
  feature of each adapted linear;
* ``init``: how A and B start (:data:`PEFT_INIT`). PiSSA and OLoRA move the top of W into B A and
  train on the residual W - s B0 A0, so :meth:`Lora.save` converts the adapter to a plain one on the
  untouched base (:func:`to_plain_lora`, peft's documented conversion);
* ``lora_plus_ratio``: LoRA+ (Hayou et al., 2024), B learns ``ratio`` times faster than A
  (:meth:`Lora.lr_scale`, the runner's optimizer hook);
* ``target_modules: all-linear``: every linear of the backbone but the head (peft's shorthand;
  :func:`resolve_targets` names the same layers for the closed forms).

Composition (``peftlab compose``; Zhang et al. 2023, "Composing Parameter-Efficient Modules with
Arithmetic Operations"), :data:`COMPOSITION`:

* ``parameter`` mode (the paper's): the factors are combined element-wise,
  ``A = sum |l_i| A_i`` and ``B = sum l_i B_i``. A negative coefficient negates the module by
  flipping its update (``-B``), never both factors (which would cancel out). Both factors are
  scaled, so a lone ``l * a`` scales the update by ``l**2``; the paper's ``l a + (1 - l) b`` mixes.
  Needs equal ranks and alphas.
* ``weight`` mode (exact): ``dW = sum l_i s_i B_i A_i`` (``s = alpha / r``), stored either
  exactly by concatenating the factors (rank = sum of ranks) or re-factorised by SVD to a chosen
  rank (the best rank-R approximation). Any ranks and alphas.
* merges (``--combine ties`` etc., :mod:`peftlab.compose.merge`): weight mode only, on each
  module's exact update; stored by SVD (full rank, or ``--rank``). Parameter mode has no task
  vector (the factors are not the update), so it refuses them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_TARGETS
from pydantic import Field, field_validator, model_validator
from safetensors.torch import load_file
from torch import nn

from peftlab.estimate.activations import Flow, block_linears
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import save_safetensors
from peftlab.methods.base import Composition, Readme, TaskMerge
from peftlab.methods.peft_common import PeftMethod, check_targets, seq_cls_config
from peftlab.estimate.params import ArchSpec, all_linears, targeted_linears

#: peft's shorthand for every linear layer except the output/classification head
ALL_LINEAR = "all-linear"
#: peftlab's ``init`` -> peft's ``init_lora_weights``. "default" is peft's own default (True):
#: A kaiming-uniform, B zero, so training starts from the base model.
PEFT_INIT: dict[str, bool | str] = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
#: inits that rewrite the base weight to W - s B0 A0 (the adapter starts as W's top part)
MUTATES_BASE = frozenset({"pissa", "olora"})
#: where the initial A and B of a base-mutating init are kept on the prepared model, for save
INITIAL_ATTR = "peftlab_initial_lora"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
#: the key endings of a saved adapter's factors
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
#: LoRA options composition does not model (the update is no longer s * B A)
_COMPOSE_UNSUPPORTED = {"use_dora": "DoRA", "lora_bias": "lora_bias", "use_qalora": "QA-LoRA"}


class LoraParams(MethodParams):
    method: Literal["lora"] = "lora"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 1e-3
    r: int = Field(default=8, ge=1)
    alpha: PositiveFloat = 16.0
    dropout: float = Field(default=0.1, ge=0, lt=1)
    #: linear names (peft's suffix rule), or "all-linear": every linear of the backbone but the head
    target_modules: Annotated[list[str], Field(min_length=1)] | Literal["all-linear"] | None = None
    #: scale B A by alpha / sqrt(r) instead of alpha / r (rank-stabilised LoRA)
    use_rslora: bool = False
    #: DoRA: W' = m * (W + s B A) / ||W + s B A|| with a trained magnitude m per output feature
    use_dora: bool = False
    #: how A and B start (:data:`PEFT_INIT`); "loftq" is named so that it is refused with a reason
    init: Literal["default", "gaussian", "pissa", "olora", "loftq"] = "default"
    #: LoRA+: B's learning rate is lr * ratio (A, the head and DoRA's magnitudes keep lr); the
    #: paper's ratios are >= 1 (16 typical), a smaller one would slow B, the opposite of LoRA+
    lora_plus_ratio: float | None = Field(default=None, ge=1, allow_inf_nan=False)

    #: ``init`` values this method refuses, with the reason (one config-error line)
    REFUSED_INITS: ClassVar[dict[str, str]] = {
        "loftq": "LoftQ initialises A and B against a quantised base; it belongs to method qlora",
    }

    @field_validator("target_modules", mode="before")
    @classmethod
    def _list_or_all_linear(cls, v: object) -> object:
        """A lone string other than the shorthand is a typo (or one name missing its list brackets)."""
        if isinstance(v, str) and v != ALL_LINEAR:
            raise ValueError(f"a list of linear layer names, or {ALL_LINEAR!r}")
        return v

    @model_validator(mode="after")
    def _init_supported(self) -> "LoraParams":
        if self.init in self.REFUSED_INITS:
            raise ValueError(f"init {self.init!r}: {self.REFUSED_INITS[self.init]}")
        return self


#: the LoRA-family options and their "off" values; a runner that does not implement them
#: (image classifiers' LoRA) refuses a row that turns one on (:func:`family_options_on`)
FAMILY_OFF: dict[str, object] = {"use_rslora": False, "use_dora": False, "init": "default", "lora_plus_ratio": None}


def family_options_on(params: LoraParams) -> list[str]:
    """The LoRA-family options this row turns on, ``target_modules: all-linear`` included."""
    on = [k for k, off in FAMILY_OFF.items() if getattr(params, k) != off]
    return on + ([f"target_modules: {ALL_LINEAR}"] if params.target_modules == ALL_LINEAR else [])


def default_targets(model_type: str) -> list[str]:
    """peft's per-architecture defaults (attention query and value for most families)."""
    if model_type not in LORA_TARGETS:
        raise PeftlabError(
            f"lora: no default target_modules for architecture {model_type!r}; set target_modules"
        )
    return list(LORA_TARGETS[model_type])


def peft_targets(params: LoraParams, model_type: str) -> list[str] | str:
    """The ``target_modules`` given to peft: the row's list, peft's defaults, or ``all-linear``,
    which peft resolves itself (every Linear but the classification head)."""
    return params.target_modules or default_targets(model_type)


def resolve_targets(params: LoraParams, spec: ArchSpec) -> list[str]:
    """The targets as the closed forms and the memory flow see them: ``all-linear`` is every linear
    of the spec (whose linears never include the head), the same layers peft picks (the method
    tables hold it: counted == closed form on BERT, RoBERTa and Llama)."""
    targets = peft_targets(params, spec.family)
    return list(all_linears(spec)) if targets == ALL_LINEAR else list(targets)


# ---- composition: pure functions of saved adapters (peftlab.compose.adapter.Adapter) -----------

def lora_modules(ad: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module key prefix: (A [r, d_in], B [d_out, r])} of a LoRA adapter."""
    out = {}
    for k, a in ad.tensors.items():
        if k.endswith(LORA_A):
            prefix = k[: -len(LORA_A)]
            b = ad.tensors.get(prefix + LORA_B)
            if b is None:
                raise PeftlabError(f"adapter {ad.name}: {k} has no matching lora_B")
            out[prefix] = (a, b)
    return out


def lora_scaling(ad: Any) -> float:
    """peft's scale of B A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    r, alpha = float(ad.config["r"]), float(ad.config["lora_alpha"])
    return alpha / r ** 0.5 if ad.config.get("use_rslora") else alpha / r


def lora_delta(ad: Any, prefix: str) -> torch.Tensor:
    """The weight update of one module, ``s * B @ A`` [d_out, d_in], in float64."""
    a, b = lora_modules(ad)[prefix]
    return lora_scaling(ad) * (b.double() @ a.double())


def _combine_parameter(terms: list[tuple[float, Any]], rank: int | None
                       ) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    if rank is not None:
        raise PeftlabError("--rank applies to --mode weight only (parameter mode keeps the operands' rank)")
    first = terms[0][1]
    out: dict[str, torch.Tensor] = {}
    for prefix, (a0, b0) in lora_modules(first).items():
        a = torch.zeros_like(a0)
        b = torch.zeros_like(b0)
        for coef, ad in terms:
            ai, bi = lora_modules(ad)[prefix]
            a = a + abs(coef) * ai
            b = b + coef * bi
        out[prefix + LORA_A], out[prefix + LORA_B] = a, b
    return out, {}


def _refactor(delta: torch.Tensor, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors (Eckart-Young): B = U sqrt(S), A = sqrt(S) V^T; zero-padded."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    b = torch.zeros(delta.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, delta.shape[1], dtype=torch.float64)
    b[:, :k] = u[:, :k] * root
    a[:k] = root[:, None] * vh[:k]
    return a.to(dtype), b.to(dtype)


def _combine_weight(terms: list[tuple[float, Any]], rank: int | None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Exact concatenation ``[l_1 s_1 B_1 | ... ] [A_1; ...]`` or SVD to ``rank``; scaling becomes 1."""
    live = [(c, ad) for c, ad in terms if c != 0] or [(0.0, terms[0][1])]
    out_rank = rank if rank is not None else sum(int(ad.config["r"]) for _, ad in live)
    out: dict[str, torch.Tensor] = {}
    for prefix, (a0, _) in lora_modules(terms[0][1]).items():
        if rank is None:
            a = torch.cat([lora_modules(ad)[prefix][0] for _, ad in live], dim=0)
            b = torch.cat([c * lora_scaling(ad) * lora_modules(ad)[prefix][1] for c, ad in live], dim=1)
        else:
            delta = sum(c * lora_delta(ad, prefix) for c, ad in live)
            a, b = _refactor(delta, rank, a0.dtype)
        out[prefix + LORA_A], out[prefix + LORA_B] = a.to(a0.dtype), b.to(a0.dtype)
    return out, _unit_scale(out_rank)


def _unit_scale(rank: int) -> dict[str, object]:
    """Config of a stored update: alpha = r makes peft's scale exactly 1 (plain alpha / r, so
    rsLoRA is switched off)."""
    return {"r": rank, "lora_alpha": rank, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}}


def _merge_weight(terms: list[tuple[float, Any]], rank: int | None,
                  merge: TaskMerge
                  ) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """``--combine ties`` etc.: merge the exact updates ``s_i B_i A_i`` of each module.

    A trimmed or dropped update is no longer a sum of the operands' low-rank factors, so it is
    stored by SVD: exactly at full rank (``min(d_out, d_in)``, the largest over modules, zero-padded)
    or, with ``rank``, as its best rank-``rank`` approximation.
    """
    modules = lora_modules(terms[0][1])
    out_rank = rank if rank is not None else max(min(b.shape[0], a.shape[1]) for a, b in modules.values())
    weights = [c for c, _ in terms]
    out: dict[str, torch.Tensor] = {}
    for prefix, (a0, _) in modules.items():
        delta = merge(prefix, [lora_delta(ad, prefix) for _, ad in terms], weights)
        out[prefix + LORA_A], out[prefix + LORA_B] = _refactor(delta, out_rank, a0.dtype)
    return out, _unit_scale(out_rank)


def _check_options(ad: Any) -> None:
    for key, what in _COMPOSE_UNSUPPORTED.items():
        if ad.config.get(key):
            raise PeftlabError(f"adapter {ad.name}: {what} adapters are not supported by compose")
    if ad.config.get("rank_pattern") or ad.config.get("alpha_pattern"):
        raise PeftlabError(f"adapter {ad.name}: per-module rank_pattern/alpha_pattern is not supported by compose")
    for prefix, (a, b) in lora_modules(ad).items():
        if a.ndim != 2 or b.ndim != 2:
            raise PeftlabError(f"adapter {ad.name}: {prefix} is not a linear layer; compose handles linear LoRA only")


def _check_pair(a: Any, b: Any, mode: str) -> None:
    if mode == "parameter" and (a.config["r"], a.config["lora_alpha"]) != (b.config["r"], b.config["lora_alpha"]):
        raise PeftlabError(
            f"parameter-space LoRA needs equal rank and alpha: {a.name} has r={a.config['r']} alpha={a.config['lora_alpha']}, "
            f"{b.name} has r={b.config['r']} alpha={b.config['lora_alpha']}; use --mode weight"
        )


def _update_shapes(ad: Any) -> dict[str, tuple[int, ...]]:
    """Weight mode: the factors may differ in rank, each update (d_out x d_in) must have one shape."""
    return {prefix: (b.shape[0], a.shape[1]) for prefix, (a, b) in lora_modules(ad).items()}


COMPOSITION = Composition(module_suffixes=(LORA_A, LORA_B),
                          combiners={"parameter": _combine_parameter, "weight": _combine_weight},
                          check_options=_check_options, check_pair=_check_pair, weight_shapes=_update_shapes,
                          mergers={"weight": _merge_weight})

class Lora(PeftMethod):
    name = "lora"
    Params = LoraParams
    runs_on = ("text", "classifier")
    peft_type = "LORA"
    merges = True
    composition = COMPOSITION
    table_order = 100
    readme = Readme(
        on="text, image classifiers",
        trains=("rank-`r` A and B on `target_modules` (peft's default: attention query/value; ViT q_proj/v_proj, "
                "EfficientNet's 1x1 convs; `all-linear`: every backbone linear but the head), plus the head. The "
                "LoRA family, text only: `use_rslora` (scale alpha/√r), `use_dora` (DoRA: plus a trained "
                "magnitude per output feature), `init: default | gaussian | pissa | olora` (PiSSA/OLoRA start "
                "from W's top singular/QR part and train on the residual; saved converted to a plain rank-2r LoRA "
                "on the untouched base), `lora_plus_ratio` (LoRA+: B's learning rate is lr × ratio)"),
        closed_form=("sum over targeted linears of `r` × (d_in + d_out) (+ d_out with DoRA) + head (convs: `r` × "
                     "(d_in·k² + d_out))"),
        via="peft",
    )

    def check(self, params: LoraParams, spec: ArchSpec | None, model_type: str) -> None:
        targets = peft_targets(params, model_type)
        if targets != ALL_LINEAR:  # all-linear matches whatever linears there are
            check_targets("lora", list(targets), spec, model_type)  # qlora's targets are lora's field too

    def peft_config(self, params: LoraParams, model: nn.Module, spec: ArchSpec | None) -> LoraConfig:
        return seq_cls_config(LoraConfig, model, spec, r=params.r, lora_alpha=params.alpha,
                              lora_dropout=params.dropout,
                              target_modules=peft_targets(params, model.config.model_type),
                              use_rslora=params.use_rslora, use_dora=params.use_dora,
                              init_lora_weights=PEFT_INIT[params.init])

    def prepare(self, model: nn.Module, params: LoraParams, spec: ArchSpec | None) -> nn.Module:
        model = super().prepare(model, params, spec)
        if params.init in MUTATES_BASE:  # deterministic (SVD / QR of W): a resume recomputes the same
            setattr(model, INITIAL_ATTR, initial_lora(model))
        return model

    def save(self, model: nn.Module, params: LoraParams, directory: Path) -> None:
        super().save(model, params, directory)
        if params.init in MUTATES_BASE:
            to_plain_lora(directory, getattr(model, INITIAL_ATTR))

    def lr_scale(self, params: LoraParams, name: str) -> float:
        """LoRA+: B matrices (``...lora_B.<adapter>.weight``) learn ``lora_plus_ratio`` times faster."""
        return params.lora_plus_ratio if params.lora_plus_ratio and ".lora_B." in name else 1.0

    def derived_trainable(self, params: LoraParams, spec: ArchSpec) -> int:
        """A (r x d_in) and B (d_out x r) on each targeted linear: r (d_in + d_out); DoRA adds one
        trained magnitude per output feature (d_out); plus the head."""
        linears = targeted_linears(spec, resolve_targets(params, spec)).values()
        dora = sum(d_out for _, d_out, _ in linears) if params.use_dora else 0
        return sum(params.r * (d_in + d_out) for d_in, d_out, _ in linears) + dora + spec.head

    def flow(self, params: LoraParams, spec: ArchSpec) -> Flow:
        """LoRA's branches; with DoRA, each adapted linear also keeps 2 x d_out values per token
        (its frozen output and its LoRA output, which the magnitude's gradient multiplies).
        DoRA's weight norm goes through B A in the forward but is detached, so that graph is freed
        before the backward and keeps nothing. qlora's too: bitsandbytes' 4-bit matmul keeps only
        its (already counted) weight."""
        targets = resolve_targets(params, spec)
        block = block_linears(spec, targets)
        dora = {n: spec.layer_linears[n][1] for n in block} if params.use_dora else {}
        return Flow(lora={n: params.dropout for n in block}, lora_r=params.r, dora=dora)


def initial_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """The A and B matrices right after a base-mutating init, keyed as peft saves them."""
    state = get_peft_model_state_dict(model)
    return {k: v.detach().cpu().clone() for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


def to_plain_lora(directory: Path, initial: dict[str, torch.Tensor]) -> None:
    """Rewrite a saved PiSSA/OLoRA adapter as a plain LoRA adapter on the *untouched* base.

    Trained on W_res = W - s B0 A0, the model is W_res + s B A = W + s (B A - B0 A0)
    = W + s [B | -B0] [A ; A0]: rank 2r, the same scale s (alpha doubles; with rsLoRA it grows by
    sqrt 2). This is peft's ``path_initial_model_for_weight_conversion`` maths
    (``LoraModel.subtract_mutated_init``), done here because peft's conversion keeps only the
    A and B tensors and would drop the trained head and DoRA's magnitudes. A plain LoRA adapter
    also composes (peftlab.compose) and merges like any other.
    """
    weights = directory / ADAPTER_WEIGHTS
    state = load_file(str(weights))
    for key, t in state.items():
        if ".lora_A." in key:
            state[key] = torch.cat([t, initial[key].to(t.dtype)], dim=0)
        elif ".lora_B." in key:
            state[key] = torch.cat([t, -initial[key].to(t.dtype)], dim=1)
    save_safetensors(state, weights, metadata={"format": "pt"})
    config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["lora_alpha"] *= 2 ** 0.5 if config.get("use_rslora") else 2
    config["r"] *= 2
    config["init_lora_weights"] = True
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


REGISTERED = (Lora,)
