"""``partial``: train the top ``top_k`` transformer blocks, what follows them, and the head.

"What follows them" is the family's post part (Llama's final norm; T5's two final norms; BERT's pooler is part of
its head): it sits between the trained blocks and the head, so freezing it would cut the gradient's only path. An
encoder-decoder trains the top ``top_k`` blocks of each stack: the encoder's top blocks reach the head only through
the decoder's cross-attention, and the decoder's alone would leave the input's encoding as it was.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import Method, Readme, freeze_all, head_names, unfreeze
from peftlab.estimate.params import FAMILIES, ArchSpec, post_params, stacks, top_blocks_params


class PartialParams(MethodParams):
    method: Literal["partial"] = "partial"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 3.16e-4
    top_k: int = Field(default=2, ge=1)


class Partial(Method):
    name = "partial"
    Params = PartialParams
    runs_on = ("text",)
    composition = None
    table_order = 20
    readme = Readme(
        on="text",
        trains=("the top `top_k` blocks (default 2; T5: of the encoder and of the decoder), the post part (Llama's "
                "final norm, T5's two), the head (with BERT's pooler)"),
        closed_form="min(`top_k`, L) × block + post + head (T5: per stack, block 0's relative bias when reached)",
    )

    def check(self, params: PartialParams, spec: ArchSpec | None, model_type: str) -> None:
        if spec is None:
            raise PeftlabError(
                f"partial: architecture {model_type!r} has no known block layout "
                f"(supported: {', '.join(FAMILIES.names())})"
            )
        most = max(s.num_layers for s in stacks(spec))
        if params.top_k > most:
            raise PeftlabError(f"config error: partial.top_k: {params.top_k} exceeds the backbone's {most} layers")

    def prepare(self, model: nn.Module, params: PartialParams, spec: ArchSpec | None) -> nn.Module:
        assert spec is not None  # check() refused it otherwise
        freeze_all(model)
        for stack in stacks(spec):
            for block in list(model.get_submodule(stack.prefix))[-params.top_k :]:
                unfreeze(block)
        for name in spec.post_modules + head_names(model, spec):
            unfreeze(model.get_submodule(name))
        return model

    def derived_trainable(self, params: PartialParams, spec: ArchSpec) -> int:
        """The top ``top_k`` blocks of each stack, the post part and the head."""
        return sum(top_blocks_params(s, params.top_k) for s in stacks(spec)) + post_params(spec) + spec.head

    def flow(self, params: PartialParams, spec: ArchSpec) -> Flow:
        """The top blocks and the post part train: nothing below the first trained block is kept."""
        k = min(params.top_k, spec.num_layers)
        return Flow(trained_blocks=frozenset(range(spec.num_layers - k, spec.num_layers)), post=True)


REGISTERED = (Partial,)
