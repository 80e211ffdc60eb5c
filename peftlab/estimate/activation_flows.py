"""Which activation walk counts a family, and one training step's bytes from a method's flow.

Each method builds its own :class:`~peftlab.estimate.activations.Flow` (where its trainable tensors sit;
``Method.flow`` in its module under ``peftlab/methods/``, declared by every registered method); the
activation count (:mod:`peftlab.estimate.activations`, :mod:`peftlab.estimate.activations_decoder`) is the same walk
for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peftlab.estimate.activations import Dims, Flow, Step, autocast_counted, backward_working_bytes
from peftlab.estimate.activations_encoder import dims_of, saved_bytes
from peftlab.estimate.activations_decoder import decoder_dims, decoder_saved_bytes
from peftlab.methods import METHODS
from peftlab.estimate.params import ArchSpec
from peftlab.infra.registry import Registry


def method_flow(params: Any, spec: ArchSpec) -> Flow:
    """The flow of ``params.method``, as that method declares it."""
    return METHODS.get(params.method).flow(params, spec)


#: family -> (its sizes from the config, the walk over its blocks)
WALKS: Registry[tuple[Callable[..., Dims], Callable[[Flow, Dims], int]]] = Registry("activation walk")
WALKS.add("bert", (dims_of, lambda f, d: saved_bytes(f, d, pooler=True)))
for _family in ("roberta", "xlm-roberta"):  # no pooler: a dense + out_proj head on the first token
    WALKS.add(_family, (dims_of, lambda f, d: saved_bytes(f, d, pooler=False)))
for _family in ("llama", "mistral"):
    WALKS.add(_family, (decoder_dims, decoder_saved_bytes))


def has_walk(spec: ArchSpec) -> bool:
    """Whether the activations of ``spec``'s family are counted op by op (else: the rough rule)."""
    return spec.family in WALKS


def training_step_bytes(flow: Flow, spec: ArchSpec, conf: Any, batch: int, length: int,
                        step: Step = Step()) -> tuple[int, int] | None:
    """(bytes kept for backward, backward working buffers) of one training step of a method whose
    flow is ``flow``, computed as ``step`` says; None for a family no walk knows (the caller falls
    back to a rough rule)."""
    if not has_walk(spec):
        return None
    dims, walk = WALKS.get(spec.family)
    d = dims(spec, conf, batch, length, step)
    kept = walk(flow, d)
    if step.autocast and not autocast_counted(flow):
        # the fp32 count has no weights' low copies; under autocast each linear may keep one (at 7B
        # parameters and a small batch they outweigh the activations): charged for every block linear
        kept += d.low_bytes * spec.num_layers * sum(d_in * d_out for d_in, d_out, *_ in spec.layer_linears.values())
    return kept, backward_working_bytes(flow, d)
