"""Per-architecture adapters: what the patched forward needs to know about a BERT-family model.

Adding an architecture is one small file here: subclass :class:`EncoderAdapter`, implement its methods
for that model's modules, and call :func:`register_adapter` on an instance.
"""

from __future__ import annotations

from . import bert as _bert  # noqa: F401  (registers the BERT adapter)
from .base import EncoderAdapter, adapter_for, register_adapter, registered_model_types

__all__ = ["EncoderAdapter", "adapter_for", "register_adapter", "registered_model_types"]
