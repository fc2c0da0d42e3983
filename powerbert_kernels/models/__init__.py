"""Hugging Face integration: patch BERT-family encoders with PoWER-BERT's word-vector elimination."""

from .architectures import EncoderAdapter, register_adapter, registered_model_types
from .extract import Extract, HardExtract
from .flops import flop_ratio, model_flops
from .loading import from_pretrained
from .patch import PowerBertModelOutput, apply_power_bert, is_patched, remove_power_bert
from .retention import LayerKeep, keep_counts, layer_plan, parse_retention, row_keep_counts, validate_retention
from .soft_extract import (
    SoftExtract,
    clip_retention_,
    derive_retention,
    retention_masses,
    retention_penalty,
    soft_extracts,
)

__all__ = [
    "EncoderAdapter",
    "Extract",
    "HardExtract",
    "LayerKeep",
    "PowerBertModelOutput",
    "SoftExtract",
    "apply_power_bert",
    "clip_retention_",
    "derive_retention",
    "flop_ratio",
    "from_pretrained",
    "is_patched",
    "keep_counts",
    "layer_plan",
    "model_flops",
    "parse_retention",
    "register_adapter",
    "registered_model_types",
    "remove_power_bert",
    "retention_masses",
    "retention_penalty",
    "row_keep_counts",
    "soft_extracts",
    "validate_retention",
]
