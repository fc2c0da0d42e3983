"""Hugging Face integration: patch BERT-family encoders with PoWER-BERT's word-vector elimination."""

from .architectures import EncoderAdapter, register_adapter, registered_model_types
from .extract import Extract, HardExtract
from .flops import flop_ratio, model_flops
from .patch import PowerBertModelOutput, apply_power_bert, is_patched, remove_power_bert
from .retention import keep_counts, parse_retention, validate_retention

__all__ = [
    "EncoderAdapter",
    "Extract",
    "HardExtract",
    "PowerBertModelOutput",
    "apply_power_bert",
    "flop_ratio",
    "is_patched",
    "keep_counts",
    "model_flops",
    "parse_retention",
    "register_adapter",
    "registered_model_types",
    "remove_power_bert",
    "validate_retention",
]
