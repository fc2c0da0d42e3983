"""Per-architecture adapters: what the patched forward needs to know about a BERT-family model.

Adding an architecture is one small file here: subclass :class:`EncoderAdapter`, implement its methods
for that model's modules, and call :func:`register_adapter` on an instance.
"""

from __future__ import annotations

from . import albert as _albert  # noqa: F401  (each module registers its adapter)
from . import bert as _bert  # noqa: F401
from . import distilbert as _distilbert  # noqa: F401
from . import electra as _electra  # noqa: F401
from . import modernbert as _modernbert  # noqa: F401
from . import roberta as _roberta  # noqa: F401
from .base import EncoderAdapter, adapter_for, register_adapter, registered_model_types

__all__ = ["EncoderAdapter", "adapter_for", "register_adapter", "registered_model_types"]
