"""Encoder-decoder classifiers (T5, mT5) that take what peft's prompt methods feed them.

``T5ForSequenceClassification`` runs the input through the encoder and, shifted right, through the
decoder, and classifies the decoder's state at the input's last EOS. It reads ``input_ids`` only:
given ``inputs_embeds`` (what peft's prompt tuning and P-tuning pass, the virtual tokens prepended)
it raises NotImplementedError, and a key/value prefix (prefix tuning) would reach the decoder
with an attention mask the encoder cannot take. :func:`accept_prompts` gives a loaded classifier
a forward that handles both and is the class's own forward otherwise, so every other method (and
plain peft on a plain T5ForSequenceClassification) computes exactly what transformers does.

* embeddings: the encoder reads them; the decoder reads them shifted right (the decoder start
  token's embedding first), as it reads the ids; the state at the last attended position is
  classified (right padding: the input's EOS, as the class's own EOS pooling).
* a prefix (a cache of ``n`` key/value positions): the encoder stack takes no cache in
  transformers, so the prefix is past keys/values of the decoder's self-attention (as peft's own
  T5 prefix tuning); the encoder gets the input's own mask, the decoder the mask with the prefix.

The instance's ``forward`` is replaced (as :func:`peftlab.backbones.kv_cache.route_prefix_cache`
does), so the class, its weights and what it saves stay transformers' own.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import Seq2SeqSequenceClassifierOutput

from peftlab.backbones.kv_cache import CACHE_ARG


def _prompted_forward(self: Any, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                      inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                      **kwargs: Any) -> Any:
    cache = kwargs.pop(CACHE_ARG, None)
    if cache is None:
        cache = kwargs.pop("past_key_values", None)
    own = type(self).forward
    if cache is not None:
        n = cache.get_seq_length()
        return own(self, input_ids=input_ids, attention_mask=None if attention_mask is None else attention_mask[:, n:],
                   decoder_attention_mask=attention_mask, labels=labels,
                   **{CACHE_ARG: EncoderDecoderCache(cache, DynamicCache())}, **kwargs)
    if inputs_embeds is None or input_ids is not None:
        return own(self, input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels,
                   **kwargs)
    batch, length, _ = inputs_embeds.shape
    mask = attention_mask if attention_mask is not None else inputs_embeds.new_ones(batch, length, dtype=torch.long)
    start_id = self.config.decoder_start_token_id
    start = self.transformer.shared.weight[self.config.pad_token_id if start_id is None else start_id]
    shifted = torch.cat([start.to(inputs_embeds.dtype).expand(batch, 1, -1), inputs_embeds[:, :-1]], dim=1)
    out = self.transformer(inputs_embeds=inputs_embeds, attention_mask=mask, decoder_inputs_embeds=shifted, **kwargs)
    last = mask.long().sum(1) - 1
    logits = self.classification_head(out.last_hidden_state[torch.arange(batch, device=last.device), last])
    loss = None if labels is None else nn.functional.cross_entropy(logits.view(batch, -1), labels.view(-1))
    return Seq2SeqSequenceClassifierOutput(
        loss=loss, logits=logits, decoder_hidden_states=out.decoder_hidden_states,
        encoder_last_hidden_state=out.encoder_last_hidden_state, encoder_hidden_states=out.encoder_hidden_states)


def accept_prompts(model: nn.Module) -> nn.Module:
    """Give a loaded T5-family classifier the forward above (see the module docstring)."""
    model.forward = types.MethodType(_prompted_forward, model)  # type: ignore[method-assign]
    return model


def last_hidden(output: Any) -> torch.Tensor:
    """The last hidden states of a classifier's forward (``output_hidden_states=True``): an
    encoder's or decoder's own, an encoder-decoder's decoder's (what its head reads)."""
    states = getattr(output, "hidden_states", None)
    if states is None:
        states = getattr(output, "decoder_hidden_states", None)
    return states[-1]
