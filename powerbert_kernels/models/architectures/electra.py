"""ELECTRA: BERT's layers, a projection after the embeddings when they are narrower, no pooler."""

from __future__ import annotations

from .base import register_adapter
from .bert import BertAdapter


class ElectraAdapter(BertAdapter):
    model_types = ("electra",)
    base_classes = ("ElectraModel",)
    cls_heads = ("ElectraForSequenceClassification",)

    def embed(self, base, input_ids, token_type_ids, position_ids, inputs_embeds):
        hidden = super().embed(base, input_ids, token_type_ids, position_ids, inputs_embeds)
        project = getattr(base, "embeddings_project", None)
        return project(hidden) if project is not None else hidden

    def pool(self, base, hidden):
        return None

    def encoder_extra_flops(self, base, batch: int, seq_len: int) -> int:
        project = getattr(base, "embeddings_project", None)
        if project is None:
            return 0
        return 2 * batch * seq_len * project.in_features * project.out_features


register_adapter(ElectraAdapter())
