"""Loading a saved PoWER-BERT model with its configuration re-applied."""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import AutoModelForSequenceClassification

from .patch import apply_power_bert, hf_model
from .retention import CONFIG_KEY


def from_pretrained(
    path_or_id: str | os.PathLike[str], auto_class: Any = AutoModelForSequenceClassification, **kwargs: Any
) -> nn.Module:
    """Load a model saved after :func:`~powerbert_kernels.apply_power_bert` and patch it again.

    ``save_pretrained`` of a patched model stores its configuration in ``config.json``
    (``power_bert_retention``, ``power_bert_exclude_self``); the weights are the stock model's. This
    loads them with ``auto_class`` and re-applies that configuration.

    Args:
        path_or_id: a saved model folder or a hub id.
        auto_class: the class to load with: any Hugging Face ``Auto*``/model class with
            ``from_pretrained`` (default ``AutoModelForSequenceClassification``; ``AutoModel`` for a
            bare encoder), or ``sentence_transformers.SentenceTransformer`` for a model saved with its
            ``save``.
        **kwargs: passed to the loader (``torch_dtype``, ``attn_implementation``, ``device``, ...).

    Returns:
        The loaded model, patched.

    Raises:
        ValueError: the saved model has no stored configuration (it was saved unpatched).
    """
    loader = getattr(auto_class, "from_pretrained", None)
    if loader is None:
        if getattr(auto_class, "__name__", "") != "SentenceTransformer":
            raise TypeError(
                "auto_class must be a class with from_pretrained (e.g. AutoModelForSequenceClassification) "
                f"or sentence_transformers.SentenceTransformer, got {auto_class!r}"
            )
        loader = auto_class
    model = loader(os.fspath(path_or_id), **kwargs)
    if getattr(hf_model(model).config, CONFIG_KEY, None) is None:
        raise ValueError(
            f"path_or_id: {os.fspath(path_or_id)!r} has no stored PoWER-BERT configuration ({CONFIG_KEY} in "
            "its config.json); it was saved unpatched. Load it as usual and call "
            "apply_power_bert(model, retention)"
        )
    return apply_power_bert(model)


def is_regression(config: Any) -> bool:
    """Whether a sequence-classification config describes a regression head: one real-valued output.

    Hugging Face's own rule: ``problem_type == "regression"``, or no problem type and ``num_labels == 1``
    (its ``*ForSequenceClassification`` then trains with the MSE loss).
    """
    problem = getattr(config, "problem_type", None)
    return problem == "regression" or (problem is None and getattr(config, "num_labels", 0) == 1)
