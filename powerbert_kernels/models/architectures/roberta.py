"""RoBERTa: BERT's layers under another name; its classification head reads the first vector."""

from __future__ import annotations

from .base import register_adapter
from .bert import BertAdapter


class RobertaAdapter(BertAdapter):
    model_types = ("roberta", "xlm-roberta")
    base_classes = ("RobertaModel", "XLMRobertaModel")
    cls_heads = (
        "RobertaForSequenceClassification",
        "RobertaForMultipleChoice",
        "XLMRobertaForSequenceClassification",
        "XLMRobertaForMultipleChoice",
    )


register_adapter(RobertaAdapter())
