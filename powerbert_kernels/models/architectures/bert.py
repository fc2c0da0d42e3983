"""BERT (``BertModel`` and the ``BertFor*`` heads that read the CLS vector)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import EncoderAdapter, dense_activation, dense_norm, dropout_active, qkv_projections, register_adapter


class BertAdapter(EncoderAdapter):
    model_types = ("bert",)
    base_classes = ("BertModel",)
    cls_heads = ("BertForSequenceClassification", "BertForMultipleChoice", "BertForNextSentencePrediction")

    def check_config(self, config) -> None:
        if getattr(config, "is_decoder", False):
            raise ValueError(
                "model: a BERT decoder (config.is_decoder=True) cannot be patched; PoWER-BERT "
                "applies to bidirectional encoders"
            )
        position = getattr(config, "position_embedding_type", "absolute")
        if position not in (None, "absolute"):
            raise ValueError(f"model: position_embedding_type={position!r} is not supported (only 'absolute')")

    def embed(self, base, input_ids, token_type_ids, position_ids, inputs_embeds) -> torch.Tensor:
        return base.embeddings(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
        )

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        return base.encoder.layer

    def qkv(self, base, layer, hidden, position_ids):
        attn = layer.attention.self
        linears = (attn.query, attn.key, attn.value)
        return qkv_projections(linears, hidden, attn.num_attention_heads, attn.attention_head_size)

    def attention_output(self, layer, attn, hidden):
        out = layer.attention.output
        if dropout_active(out.dropout):
            return out(attn, hidden)
        return dense_norm(out.dense, attn, hidden, out.LayerNorm)

    def feed_forward(self, layer, hidden):
        inner = dense_activation(layer.intermediate.dense, hidden, layer.intermediate.intermediate_act_fn)
        out = layer.output
        if dropout_active(out.dropout):
            return out(inner, hidden)
        return dense_norm(out.dense, inner, hidden, out.LayerNorm)

    def pool(self, base, hidden):
        return base.pooler(hidden) if base.pooler is not None else None


register_adapter(BertAdapter())
