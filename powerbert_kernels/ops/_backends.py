"""Registration of the optional backends (Triton kernels, compiled extension).

Each is imported only if it can be; what failed is kept as the reason the dispatcher reports.
"""

from __future__ import annotations

from . import _dispatch

try:
    from ..triton import register as _register_triton

    _register_triton()
except Exception as exc:  # Triton not installed (an optional extra), or a build that fails on import
    _dispatch.set_missing_reason("triton", f"Triton is not usable: {type(exc).__name__}: {exc}")

try:
    from ..ext import register as _register_ext

    _register_ext()
except Exception as exc:  # not built, built against another PyTorch, or failing to load
    _dispatch.set_missing_reason("ext", f"the compiled extension is not usable: {exc}")
