"""Each method's :class:`~peftlab.activations.Flow`: where its trainable tensors sit in the encoder.

One function per method name in ``FLOWS``; the activation count (:mod:`peftlab.activations`) is
the same walk for all of them. A method missing here is planned as if everything trained (the
``full`` flow), an over-count that keeps the memory guard on the safe side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peftlab.activations import FLOWS, Dims, Flow, backward_working_bytes, dims_of, saved_bytes
from peftlab.activations_decoder import decoder_dims, decoder_saved_bytes
from peftlab.registry import Registry
from peftlab.params import ArchSpec, matches_target, prefix_token_dim


def _block_names(spec: ArchSpec, targets: list[str]) -> list[str]:
    """Block-relative names of the linears ``targets`` match (peft's rule, checked on block 0)."""
    first = f"{spec.layers_prefix}.0."
    return [n for n in spec.layer_linears if any(matches_target(first + n, t) for t in targets)]


def _post_targeted(spec: ArchSpec, targets: list[str]) -> bool:
    return any(matches_target(n, t) for n in spec.post_linears for t in targets)


@FLOWS.register("full")
def _full(params: Any, spec: ArchSpec) -> Flow:
    return Flow(trained_blocks=frozenset(range(spec.num_layers)), embeddings=True, post=True)


@FLOWS.register("partial")
def _partial(params: Any, spec: ArchSpec) -> Flow:
    k = min(params.top_k, spec.num_layers)
    return Flow(trained_blocks=frozenset(range(spec.num_layers - k, spec.num_layers)), post=True)


def _lora(params: Any, spec: ArchSpec) -> Flow:
    """LoRA's branches; with DoRA, each adapted linear also keeps 2 x d_out values per token
    (its frozen output and its LoRA output, which the magnitude's gradient multiplies).
    DoRA's weight norm goes through B A in the forward but is detached, so that graph is freed
    before the backward and keeps nothing."""
    from peftlab.methods.lora import resolve_targets

    targets = resolve_targets(params, spec)
    block = _block_names(spec, targets)
    post = _post_targeted(spec, targets)
    dora = {n: spec.layer_linears[n][1] for n in block} if params.use_dora else {}
    if params.use_dora and post:
        dora[""] = sum(d_out for _, d_out, _ in spec.post_linears.values())
    return Flow(lora={n: params.dropout for n in block}, lora_r=params.r,
                lora_post=params.dropout if post else None, dora=dora)


FLOWS.add("lora", _lora)
FLOWS.add("qlora", _lora)  # bitsandbytes' 4-bit matmul keeps only its (already counted) weight


@FLOWS.register("ia3")
def _ia3(params: Any, spec: ArchSpec) -> Flow:
    from peftlab.methods.ia3 import Ia3

    targets, feedforward = Ia3().modules(params, spec.family)
    first = f"{spec.layers_prefix}.0."
    # peft's feedforward test is a plain suffix (so "output.dense" marks attention.output.dense too)
    return Flow(ia3={n: any((first + n).endswith(ff) for ff in feedforward) for n in _block_names(spec, targets)})


@FLOWS.register("prompt_tuning")
def _prompt(params: Any, spec: ArchSpec) -> Flow:
    return Flow(prompt_tokens=params.num_virtual_tokens)


@FLOWS.register("p_tuning")
def _p_tuning(params: Any, spec: ArchSpec) -> Flow:
    """The MLP encoder keeps its input (h) and two ReLU outputs (e) per virtual token (computed once
    per step, then repeated over the batch);
    the LSTM encoder's oneDNN workspace is not counted (about 10 values of width e per direction
    and layer are, an under-count of a few hundred KB at most: only 10-odd tokens go through it)."""
    e, h = params.encoder_hidden_size or spec.hidden, spec.hidden
    per_token = h + 2 * e if params.encoder == "mlp" else h + 2 * 2 * 10 * e + 2 * 2 * e
    return Flow(prompt_tokens=params.num_virtual_tokens, prompt_encoder_values=per_token)


@FLOWS.register("prefix_tuning")
def _prefix(params: Any, spec: ArchSpec) -> Flow:
    """With projection, the encoder keeps its input (d) and its Tanh output (enc) per token and example."""
    d = prefix_token_dim(spec)
    enc = (params.encoder_hidden_size or d) if params.projection else 0
    return Flow(prefix_tokens=params.num_virtual_tokens, prefix_encoder_values=d + enc if params.projection else 0)


def _bottleneck(kind: str) -> Callable[[Any, ArchSpec], Flow]:
    def flow(params: Any, spec: ArchSpec) -> Flow:
        from peftlab.methods.bottleneck_layers import BottleneckConfig, is_site

        size = BottleneckConfig(kind=kind, bottleneck_size=params.bottleneck_size,
                                reduction_factor=params.reduction_factor).size_for(spec.hidden)
        first = f"{spec.layers_prefix}.0."
        return Flow(adapters={n: (size, params.nonlinearity) for n in spec.layer_linears if is_site(first + n, kind)})

    return flow


FLOWS.add("houlsby", _bottleneck("houlsby"))
FLOWS.add("pfeiffer", _bottleneck("pfeiffer"))


def method_flow(params: Any, spec: ArchSpec) -> Flow:
    """The flow of ``params.method``; an unknown method counts as full fine-tuning (an over-count)."""
    name = params.method if params.method in FLOWS else "full"
    return FLOWS.get(name)(params, spec)


#: family -> (its sizes from the config, the walk over its blocks)
WALKS: Registry[tuple[Callable[..., Dims], Callable[[Flow, Dims], int]]] = Registry("activation walk")
WALKS.add("bert", (dims_of, lambda f, d: saved_bytes(f, d, pooler=True)))
for _family in ("roberta", "xlm-roberta"):  # no pooler: a dense + out_proj head on the first token
    WALKS.add(_family, (dims_of, lambda f, d: saved_bytes(f, d, pooler=False)))
for _family in ("llama", "mistral"):
    WALKS.add(_family, (decoder_dims, decoder_saved_bytes))


def training_step_bytes(params: Any, spec: ArchSpec, conf: Any, batch: int, length: int,
                        mask_bytes: int = 4) -> tuple[int, int] | None:
    """(bytes kept for backward, backward working buffers) of one training step of ``params``'s
    method; None for a family no walk knows (the caller falls back to a rough rule)."""
    if spec.family not in WALKS:
        return None
    dims, walk = WALKS.get(spec.family)
    flow, d = method_flow(params, spec), dims(spec, conf, batch, length, mask_bytes)
    return walk(flow, d), backward_working_bytes(flow, d)
