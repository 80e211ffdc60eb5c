"""What a training run changes in its model while it trains on a CPU, and undoes afterwards.

One entry point for both training loops (runners/train.py ``fit``, runners/lm_fit.py), so that
they make the same choices in the same order:

1. peftlab.backbones.dropout: every ``nn.Dropout`` draws its mask from 32 random bits per element,
   where a probe finds that faster than torch's sampler on this CPU (a lasting swap: the same
   dropout, and the same model in evaluation).
2. peftlab.backbones.attention: where (1) happened, SDPA with attention dropout computes its math
   path in peftlab with the same sampler, for the length of the run.
3. ``lean_lora_casts``: under autocast, peft's plain LoRA layers keep their bf16 input instead of
   casting it to fp32 and back (bit for bit the same numbers), for the length of the run.

Each computes the same model; what was chosen is recorded in the result (``environment.dropout``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from torch import nn

from peftlab.backbones import attention
from peftlab.backbones.dropout import BitsDropout, lean_lora_casts
from peftlab.backbones.dropout import apply as swap_dropouts


@contextlib.contextmanager
def cpu_training(model: nn.Module, device_type: str, autocast: bool,
                 env: Mapping[str, str] | None = None) -> Iterator[str | None]:
    """Apply (1)-(3) of this module's docstring to ``model`` while the block runs; yields which
    dropout sampler trains and why (None: the model has no dropout), for the result."""
    why = swap_dropouts(model, device_type, env)
    if any(isinstance(m, BitsDropout) for m in model.modules()) and attention.switch(model):
        why = f"{why}; attention: {attention.NAME}"
    try:
        with lean_lora_casts(model, device_type == "cpu" and autocast):
            yield why
    finally:  # no saved config may name peftlab's attention: transformers elsewhere would not know it
        attention.restore(model)
