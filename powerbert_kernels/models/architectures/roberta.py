"""RoBERTa and the models that are RoBERTa's layers under another name (XLM-R, CamemBERT, data2vec-text).

Their classification heads read the first vector; the position ids count from the padding index, which
their own embeddings compute.
"""

from __future__ import annotations

from .base import register_adapter
from .bert import BertAdapter


class RobertaAdapter(BertAdapter):
    model_types = ("roberta", "xlm-roberta", "camembert", "data2vec-text")
    base_classes = ("RobertaModel", "XLMRobertaModel", "CamembertModel", "Data2VecTextModel")
    cls_heads = (
        "RobertaForSequenceClassification",
        "RobertaForMultipleChoice",
        "XLMRobertaForSequenceClassification",
        "XLMRobertaForMultipleChoice",
        "CamembertForSequenceClassification",
        "CamembertForMultipleChoice",
        "Data2VecTextForSequenceClassification",
        "Data2VecTextForMultipleChoice",
    )


register_adapter(RobertaAdapter())
