"""A KV cache handed to a transformers model under the name the installed version uses.

transformers 5.24 renamed the forward argument ``past_key_values`` to ``cache`` (and the output
field with it); the old name still works, with a deprecation warning, until its announced removal
in 5.40. peftlab passes caches in two places: the in-context scorer's shared-prompt prefix
(peftlab.icl.scoring) and prefix tuning's trained key/values (:func:`route_prefix_cache`). Both
take the name from :data:`CACHE_ARG`, read once from transformers' own output class, so the same
code runs on 5.0 to 5.23 (``past_key_values``) and on 5.24 and later (``cache``) without warnings.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

#: "cache" on transformers >= 5.24, "past_key_values" before
CACHE_ARG: str = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{CACHE_ARG: cache}``, to splat into a model call."""
    return {CACHE_ARG: cache}


def returned_cache(output: Any) -> Any:
    """The cache a forward pass returned (``use_cache=True``)."""
    return getattr(output, CACHE_ARG)


def _prefix_forward(self: Any, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                    inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                    **kwargs: Any) -> Any:
    """peft's sequence-classification prefix-tuning forward, with the prefix passed as ``CACHE_ARG``.

    The same steps as peft 0.21's ``PeftModelForSequenceClassification.forward`` for prefix tuning:
    the attention mask grows by ``num_virtual_tokens`` ones in front, explicit position ids are
    shifted past the prefix, the trained key/values (``get_prompt``) go in as the cache, and the
    wrapped model computes logits and loss with its own head.
    """
    config = self.active_peft_config
    batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
    if attention_mask is not None:
        attention_mask = torch.cat((attention_mask.new_ones(batch, config.num_virtual_tokens), attention_mask), dim=1)
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"] + config.num_virtual_tokens
    kwargs.pop("task_ids", None)
    return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                           labels=labels, **cache_kwargs(self.get_prompt(batch_size=batch)), **kwargs)


def route_prefix_cache(model: nn.Module) -> nn.Module:
    """Give a peft prefix-tuning model the forward above.

    peft 0.21 looks for ``past_key_values`` in the backbone's forward signature and, under
    transformers >= 5.24 (where it is ``cache``), refuses: "Model does not support past key values
    which are required for prefix tuning". The instance's ``forward`` is replaced (``nn.Module``
    calls it), so saving, loading and the peft model class stay peft's own.
    """
    model.forward = types.MethodType(_prefix_forward, model)  # type: ignore[method-assign]
    return model
