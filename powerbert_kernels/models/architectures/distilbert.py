"""DistilBERT: no token types, no pooler, its own module names; its heads read the first vector."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import EncoderAdapter, dense_activation, dense_norm, dropout_active, qkv_projections, register_adapter


class DistilBertAdapter(EncoderAdapter):
    model_types = ("distilbert",)
    base_classes = ("DistilBertModel",)
    cls_heads = ("DistilBertForSequenceClassification", "DistilBertForMultipleChoice")

    def embed(self, base, input_ids, token_type_ids, position_ids, inputs_embeds) -> torch.Tensor:
        # No token type embeddings: token_type_ids (from a BERT tokenizer, say) are ignored, as the stock
        # model ignores them.
        return base.embeddings(input_ids, inputs_embeds, position_ids)

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        return base.transformer.layer

    def qkv(self, base, layer, hidden, position_ids):
        attn = layer.attention
        linears = (attn.q_lin, attn.k_lin, attn.v_lin)
        return qkv_projections(linears, hidden, attn.n_heads, attn.attention_head_size)

    def attention_output(self, layer, attn, hidden):
        return dense_norm(layer.attention.out_lin, attn, hidden, layer.sa_layer_norm)

    def feed_forward(self, layer, hidden):
        ffn = layer.ffn
        if dropout_active(ffn.dropout):
            return layer.output_layer_norm(ffn(hidden) + hidden)
        inner = dense_activation(ffn.lin1, hidden, ffn.activation)
        return dense_norm(ffn.lin2, inner, hidden, layer.output_layer_norm)

    def dims(self, config) -> dict[str, int]:
        return {
            "hidden": config.dim,
            "heads": config.n_heads,
            "layers": config.n_layers,
            "ffn_weights": 2 * config.dim * config.hidden_dim,
        }


register_adapter(DistilBertAdapter())
