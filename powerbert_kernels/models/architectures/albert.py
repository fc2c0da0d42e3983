"""ALBERT: narrow embeddings projected to the hidden size, and layers shared across the depth.

``num_hidden_layers`` applications of ``num_hidden_groups`` layer groups (application i runs group
``int(i / (num_hidden_layers / num_hidden_groups))``, as the stock encoder does). Each application is one
entry of :meth:`layers` with its own retention entry and extract step, so the same weights run on fewer
vectors at every depth. The embedding projection runs on all N vectors and is counted in the FLOPs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import dense_activation, dense_norm, dropout_active, qkv_projections, register_adapter
from .bert import BertAdapter


class AlbertAdapter(BertAdapter):
    model_types = ("albert",)
    base_classes = ("AlbertModel",)
    cls_heads = ("AlbertForSequenceClassification", "AlbertForMultipleChoice")

    def check_config(self, config) -> None:
        super().check_config(config)
        inner = getattr(config, "inner_group_num", 1)
        if inner != 1:
            raise ValueError(
                f"model: ALBERT with inner_group_num={inner} is not supported (only 1, as every released "
                "ALBERT): each retention entry belongs to one layer application"
            )

    def embed(self, base, input_ids, token_type_ids, position_ids, inputs_embeds) -> torch.Tensor:
        hidden = base.embeddings(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
        )
        return base.encoder.embedding_hidden_mapping_in(hidden)

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        config = base.config
        groups = base.encoder.albert_layer_groups
        per_group = config.num_hidden_layers / config.num_hidden_groups
        return [groups[int(i / per_group)].albert_layers[0] for i in range(config.num_hidden_layers)]

    def qkv(self, base, layer, hidden, position_ids):
        attn = layer.attention
        linears = (attn.query, attn.key, attn.value)
        return qkv_projections(linears, hidden, attn.num_attention_heads, attn.attention_head_size)

    def attention_output(self, layer, attn, hidden):
        block = layer.attention
        if dropout_active(block.output_dropout):
            return block.LayerNorm(hidden + block.output_dropout(block.dense(attn)))
        return dense_norm(block.dense, attn, hidden, block.LayerNorm)

    def feed_forward(self, layer, hidden):
        inner = dense_activation(layer.ffn, hidden, layer.activation)
        return dense_norm(layer.ffn_output, inner, hidden, layer.full_layer_layer_norm)

    def pool(self, base, hidden):
        if base.pooler is None:
            return None
        return base.pooler_activation(base.pooler(hidden[:, 0]))

    def encoder_extra_flops(self, base, batch: int, seq_len: int) -> int:
        project = base.encoder.embedding_hidden_mapping_in
        return 2 * batch * seq_len * project.in_features * project.out_features


register_adapter(AlbertAdapter())
