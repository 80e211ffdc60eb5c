"""``ln_tuning``: LayerNorm tuning (Zhao et al., 2024, "Tuning LayerNorm in Attention"), through peft.

Only the targeted normalisation layers train (LayerNorm's weight and bias, RMSNorm's weight):
peft puts a trainable copy of each next to the frozen original, so training starts from the base
model and merging swaps the copy in. The head is trained too (peft's ``modules_to_save``); saved
in peft's format, so plain ``PeftModel.from_pretrained`` loads it.
"""

from __future__ import annotations

from typing import Literal

from peft import LNTuningConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING as LN_TARGETS
from pydantic import Field
from torch import nn

from peftlab.estimate.activations import Flow
from peftlab.estimate.params import ArchSpec, all_linears, all_norms, matches_target
from peftlab.infra.config_base import MethodParams, PositiveFloat
from peftlab.infra.errors import PeftlabError
from peftlab.methods.base import Readme
from peftlab.methods.peft_common import TargetedPeftMethod, seq_cls_config

#: peft has no defaults for the encoders: every LayerNorm (both per block and the embeddings')
ENCODER_NORMS = ["LayerNorm"]


def block_norms(spec: ArchSpec, targets: list[str]) -> list[str]:
    """Block-relative names of the norms ``targets`` match (peft's rule, checked on block 0)."""
    first = f"{spec.layers_prefix}.0."
    return [n for n in spec.layer_norms if any(matches_target(first + n, t) for t in targets)]


class LnTuningParams(MethodParams):
    method: Literal["ln_tuning"] = "ln_tuning"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 3.16e-3
    #: norm-module names (peft's suffix rule); None: peft's per-architecture defaults (Llama: both
    #: block norms and the final norm), every LayerNorm for BERT-like encoders
    target_modules: list[str] | None = Field(default=None, min_length=1)


class LnTuning(TargetedPeftMethod):
    name = "ln_tuning"
    Params = LnTuningParams
    default_targets = {**LN_TARGETS, **{f: ENCODER_NORMS for f in ("bert", "roberta", "xlm-roberta")}}
    peft_type = "LN_TUNING"
    merges = True  # merging swaps the trained copy in: exact
    composition = None  # trained norm copies replace the originals; no rule to add them is modelled
    table_order = 200
    readme = Readme(
        on="text",
        trains=("LayerNorm tuning: a trained copy of each targeted norm layer (default: every LayerNorm of "
                "an encoder; Llama: both block norms and the final norm); the head"),
        closed_form="sum of the targeted norms' parameters + head",
        via="peft",
    )

    def check(self, params: LnTuningParams, spec: ArchSpec | None, model_type: str) -> None:
        """Refuse a target that names a linear (peft would train the whole layer, not a norm) or no
        norm at all, before any model loads; unknown architectures are left to peft."""
        targets = self.targets(params, model_type)
        if spec is None:
            return
        norms, linears = all_norms(spec), all_linears(spec)
        for t in targets:
            if any(matches_target(n, t) for n in linears):
                raise PeftlabError(f"config error: ln_tuning.target_modules: {t!r} names a linear layer of this "
                                   f"{model_type} backbone, not a norm")
            if not any(matches_target(n, t) for n in norms):
                raise PeftlabError(f"config error: ln_tuning.target_modules: {t!r} matches no norm layer of this "
                                   f"{model_type} backbone")

    def peft_config(self, params: LnTuningParams, model: nn.Module, spec: ArchSpec | None) -> LNTuningConfig:
        return seq_cls_config(LNTuningConfig, model, spec, target_modules=self.targets(params, model.config.model_type))

    def targeted_norms(self, params: LnTuningParams, spec: ArchSpec) -> dict[str, int]:
        targets = self.targets(params, spec.family)
        return {n: k for n, k in all_norms(spec).items() if any(matches_target(n, t) for t in targets)}

    def derived_trainable(self, params: LnTuningParams, spec: ArchSpec) -> int:
        """The targeted norms' weights (and LayerNorm biases), plus the head."""
        return sum(self.targeted_norms(params, spec).values()) + spec.head

    def flow(self, params: LnTuningParams, spec: ArchSpec) -> Flow:
        """The targeted block norms train (:attr:`Flow.norms`); a gradient flows from the lowest of
        them to the head through frozen linears, which keep nothing for their weights. A trained
        embedding LayerNorm is the embeddings' flow (its input kept; an over-count by the token ids
        that flow keeps for the embedding tables), a trained final norm the post part's."""
        trained = self.targeted_norms(params, spec)
        outer = [n for n in trained if n in spec.outer_norms]
        return Flow(norms=frozenset(block_norms(spec, self.targets(params, spec.family))),
                    embeddings=any(n not in spec.post_modules for n in outer),
                    post=any(n in spec.post_modules for n in outer))


REGISTERED = (LnTuning,)
