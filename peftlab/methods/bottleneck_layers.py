"""Houlsby and Pfeiffer bottleneck adapters for Hugging Face transformer models.

peft ships no bottleneck adapters, so this module provides them. An adapter is a
small residual MLP ``x + up(act(down(x)))`` placed right after an output
projection of a transformer block (Houlsby et al., 2019: after the attention
output projection *and* the FFN output projection; Pfeiffer et al., 2020: after
the FFN output projection only). We insert it by wrapping the projection
``nn.Linear`` so that no model forward code has to be patched; in BERT-style
blocks the adapter therefore runs just before the block's dropout + residual +
LayerNorm, which matches the published placement up to the dropout position.

The up-projection starts at zero, so a freshly adapted model computes exactly
the base model's function. Adapters can NOT be merged into the base weights
(unlike LoRA): the nonlinearity between down- and up-projection makes
``adapter(W x + c)`` non-linear in ``x``, so no single Linear reproduces it.
They always add inference latency, which a PEFT comparison should measure.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from peftlab.infra.io import save_safetensors

KINDS = ("houlsby", "pfeiffer")
_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"

# Name-suffix patterns of the Linear layers that adapters follow. Anchored on a
# dot boundary so e.g. "crossattention.output.dense" or "classifier.dense" never match.
_ATTN_PATTERNS = (
    re.compile(r"(^|\.)attention\.output\.dense$"),  # BERT, RoBERTa, ELECTRA, ...
    re.compile(r"(^|\.)self_attn\.o_proj$"),  # Llama, Mistral, Qwen2, Gemma
    re.compile(r"(^|\.)attention\.out_lin$"),  # DistilBERT
    re.compile(r"\.layer\.0\.SelfAttention\.o$"),  # T5 / mT5 encoder and decoder self-attention
)
_FFN_PATTERNS = (
    re.compile(r"\.\d+\.output\.dense$"),  # BERT/RoBERTa: the layer's own output.dense
    re.compile(r"(^|\.)mlp\.down_proj$"),  # Llama, Mistral, Qwen2, Gemma
    re.compile(r"(^|\.)ffn\.lin2$"),  # DistilBERT
    re.compile(r"\.DenseReluDense\.wo$"),  # T5 / mT5 (gated or not), encoder and decoder blocks
)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; expected one of {KINDS}")


@dataclass(frozen=True)
class BottleneckConfig:
    """Hyper-parameters of a bottleneck adapter; validated on construction."""
    kind: str
    bottleneck_size: int | None = None
    reduction_factor: float | None = None
    nonlinearity: str = "relu"

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        b, r = self.bottleneck_size, self.reduction_factor
        if b is not None and r is not None:
            raise ValueError("set exactly one of bottleneck_size and reduction_factor, not both")
        if b is None and r is None:
            object.__setattr__(self, "reduction_factor", 16.0)  # Pfeiffer et al. default
        elif b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"bottleneck_size must be a positive int, got {b!r}")
        elif r is not None:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0:
                raise ValueError(f"reduction_factor must be a positive number, got {r!r}")
            object.__setattr__(self, "reduction_factor", float(r))
        if not isinstance(self.nonlinearity, str) or self.nonlinearity not in _ACTS:
            raise ValueError(f"unknown nonlinearity {self.nonlinearity!r}; expected one of {tuple(_ACTS)}")

    def size_for(self, hidden: int) -> int:
        """Bottleneck width for a site whose hidden size is ``hidden``."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, int(hidden // self.reduction_factor))

    def to_dict(self) -> dict:
        return asdict(self)  # JSON-ready: only str / int / float / None

    @classmethod
    def from_dict(cls, d: dict) -> "BottleneckConfig":
        if not isinstance(d, dict):
            raise ValueError(f"config must be a dict, got {type(d).__name__}")
        unknown = set(d) - {"kind", "bottleneck_size", "reduction_factor", "nonlinearity"}
        if unknown:
            raise ValueError(f"unknown BottleneckConfig keys: {sorted(unknown)}")
        if "kind" not in d:
            raise ValueError("BottleneckConfig dict lacks 'kind'")
        return cls(**d)


class BottleneckAdapter(nn.Module):
    """down (Linear hidden->b, with bias) -> act -> up (Linear b->hidden, with bias,
    initialised to ZERO weight and bias so the model starts as the base model);
    returns x + up(act(down(x)))."""

    def __init__(self, hidden: int, bottleneck: int, nonlinearity: str = "relu", device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck, bias=True, device=device, dtype=dtype)
        self.act = _ACTS[nonlinearity]()
        self.up = nn.Linear(bottleneck, hidden, bias=True, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)  # zero residual branch => identity at start
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class AdapterWrappedLinear(nn.Module):
    """Wraps an existing output-projection nn.Linear ``base``; forward(x) = adapter(base(x)).
    Keeps ``.base`` and ``.adapter``; mirrors the Linear's attributes for model code that reads them."""

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)
    weight = property(lambda self: self.base.weight)
    bias = property(lambda self: self.base.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def is_site(name: str, kind: str) -> bool:
    """Whether an adapter of ``kind`` follows the linear called ``name`` (a full dotted name)."""
    _check_kind(kind)
    patterns = _FFN_PATTERNS + (_ATTN_PATTERNS if kind == "houlsby" else ())
    return any(p.search(name) for p in patterns)


def adapter_sites(model: nn.Module, kind: str) -> list[str]:
    """Dotted names of the nn.Linear modules after which adapters go (module order).
    Houlsby: attention output projection and FFN output projection of every layer;
    Pfeiffer: FFN output projection only."""
    sites = [name for name, mod in model.named_modules() if type(mod) is nn.Linear and is_site(name, kind)]
    if not sites:
        raise ValueError(f"no recognised {kind} adapter sites in {type(model).__name__} (supported: BERT/RoBERTa, Llama/Mistral/Qwen, DistilBERT, T5/mT5; un-adapted models only)")
    return sites


def _wrapped(model: nn.Module) -> list[tuple[str, AdapterWrappedLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterWrappedLinear)]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def add_bottleneck_adapters(model: nn.Module, cfg: BottleneckConfig) -> list[str]:
    """Replace each site Linear by an AdapterWrappedLinear in place; returns the site names.
    Adapter hidden size = the site's out_features; dtype/device follow the base Linear.
    requires_grad of existing parameters is left alone: the caller decides what to freeze."""
    if _wrapped(model):
        raise ValueError("model already has bottleneck adapters; use a fresh base model")
    sites = adapter_sites(model, cfg.kind)
    for name in sites:
        base = model.get_submodule(name)
        h = base.out_features
        adapter = BottleneckAdapter(h, cfg.size_for(h), cfg.nonlinearity, device=base.weight.device, dtype=base.weight.dtype)
        _set_submodule(model, name, AdapterWrappedLinear(base, adapter))
    return sites


def _remove_adapters(model: nn.Module) -> None:
    """Undo add_bottleneck_adapters (used to roll back a failed load)."""
    for name, mod in _wrapped(model):
        _set_submodule(model, name, mod.base)


def adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Only the adapter parameters, with names relative to ``model`` (all contain '.adapter.')."""
    return [(f"{n}.adapter.{pn}", p) for n, m in _wrapped(model) for pn, p in m.adapter.named_parameters()]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights as detached, contiguous CPU clones (safe to save or keep as a snapshot)."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in adapter_parameters(model)}


def load_adapter_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Strictly copy ``sd`` into the model's adapters; ValueError lists every mismatch."""
    params = dict(adapter_parameters(model))
    missing = sorted(set(params) - set(sd))
    unexpected = sorted(set(sd) - set(params))
    bad = sorted(
        f"{k}: expected {tuple(params[k].shape)}, got {tuple(sd[k].shape)}"
        for k in set(params) & set(sd) if tuple(params[k].shape) != tuple(sd[k].shape)
    )
    if missing or unexpected or bad:
        raise ValueError(f"adapter state dict mismatch: missing={missing} unexpected={unexpected} shape_mismatch={bad}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(sd[k])


def save_adapters(model: nn.Module, cfg: BottleneckConfig, directory) -> None:
    """Write adapter_model.safetensors + adapter_config.json into ``directory`` (created)."""
    wrapped = _wrapped(model)
    if not wrapped:
        raise ValueError("model has no bottleneck adapters to save")
    for name, m in wrapped:  # refuse to write a config that would not reload
        if m.adapter.down.out_features != cfg.size_for(m.out_features):
            raise ValueError(f"adapter at {name} has bottleneck {m.adapter.down.out_features}, config implies {cfg.size_for(m.out_features)}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_safetensors(adapter_state_dict(model), d / WEIGHTS_NAME)
    meta = {"peftlab_method": cfg.kind, **cfg.to_dict(), "sites": [n for n, _ in wrapped]}
    (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2))


def load_adapters(model: nn.Module, directory) -> BottleneckConfig:
    """Inject adapters described by ``directory`` into an un-adapted model and load their weights
    strictly (safetensors only, never pickle). On any error the model is left un-adapted."""
    from safetensors.torch import load_file

    d = Path(directory)
    cpath, wpath = d / CONFIG_NAME, d / WEIGHTS_NAME
    for p in (cpath, wpath):
        if not p.is_file():
            raise ValueError(f"missing adapter file: {p}")
    try:
        meta = json.loads(cpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"invalid JSON in {cpath}: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{cpath} must hold a JSON object")
    meta = dict(meta)
    method, sites = meta.pop("peftlab_method", None), meta.pop("sites", None)
    cfg = BottleneckConfig.from_dict(meta)
    if method != cfg.kind:
        raise ValueError(f"{cpath}: peftlab_method {method!r} does not match kind {cfg.kind!r}")
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        raise ValueError(f"{cpath}: 'sites' must be a list of module names")
    try:
        sd = load_file(str(wpath))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read {wpath}: {e}") from e
    found = adapter_sites(model, cfg.kind)
    if found != sites:
        raise ValueError(f"model adapter sites differ from saved sites ({len(found)} vs {len(sites)}); wrong base model?")
    add_bottleneck_adapters(model, cfg)
    try:
        load_adapter_state_dict(model, sd)
    except Exception:
        _remove_adapters(model)
        raise
    return cfg


def expected_adapter_params(hidden_sizes: list[int], cfg: BottleneckConfig) -> int:
    """Closed form: sum over sites of (h*b + b) + (b*h + h) with b = cfg.size_for(h)."""
    return sum(2 * h * cfg.size_for(h) + cfg.size_for(h) + h for h in hidden_sizes)


def count_sites(num_layers: int, kind: str) -> int:
    """Number of adapter sites in a ``num_layers``-block model: 2 per block (Houlsby) or 1 (Pfeiffer)."""
    _check_kind(kind)
    return (2 if kind == "houlsby" else 1) * num_layers
