"""The compiled C++/CUDA extension (``powerbert_kernels._C``): the ``ext`` backend of the ops.

The extension registers two torch operators in the ``powerbert`` namespace, with C++ CPU kernels and,
when built with a CUDA toolkit, CUDA kernels that run on every GPU from the Kepler K80 (sm_37) on:

- ``powerbert::significance_from_probs(probs, mask, q_offset=0, exclude_self=False)``: PoWER-BERT's
  significance from a materialised block of attention probabilities;
- ``powerbert::select_gather_ext(hidden, significance, mask, keep)``: select-and-gather with the
  semantics of :func:`powerbert_kernels.ops.select_gather_ref`;

and a CPU-only one:

- ``powerbert::attention_significance_cpu(q, k, v, mask, scale, exclude_self)``: fused multi-head
  attention with significance (the semantics of
  :func:`powerbert_kernels.ops.attention_with_significance_ref`), one parallel region per call.

On top of them this package registers the ``ext`` implementations of the public ops
``attention_with_significance`` and ``select_gather`` with the dispatcher (see :mod:`._backend`).
Importing it never fails: without a built extension, :data:`LOAD_ERROR` says why, and the dispatcher
reports it when ``ext`` is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

_MODULE = "powerbert_kernels._C"
_C = None
LOAD_ERROR: str | None = None
"""Why ``powerbert_kernels._C`` could not be loaded (None when it is loaded)."""

if importlib.util.find_spec(_MODULE) is None:
    LOAD_ERROR = (
        f"{_MODULE} is not built; build it with a C++ compiler and PyTorch present: "
        "`pip install --no-build-isolation -e .` (see docs/ext.md)"
    )
else:
    try:
        _C = importlib.import_module(_MODULE)
    except ImportError as exc:  # typically built against another PyTorch (undefined symbols)
        LOAD_ERROR = (
            f"{_MODULE} failed to load ({exc}); rebuild it against the installed PyTorch "
            f"{torch.__version__}: `pip install --no-build-isolation -e .`"
        )

if _C is not None:
    from . import _ops  # noqa: F401  (fake and autograd registrations of the C++ operators)


def is_loaded() -> bool:
    """Whether the compiled extension is loaded (its operators are registered)."""
    return _C is not None


def build_info() -> dict[str, object]:
    """How the extension was built: ``loaded``, ``error``, ``cpu`` and ``cuda`` (kernels present) and
    ``cuda_archs`` (the architectures the CUDA kernels were compiled for, e.g. ``"sm_37+sm_60"``)."""
    with_cuda = bool(getattr(_C, "WITH_CUDA", 0))
    return {
        "loaded": _C is not None,
        "error": LOAD_ERROR,
        "cpu": _C is not None,
        "cuda": with_cuda,
        "cuda_archs": getattr(_C, "CUDA_ARCHS", "") if with_cuda else "",
    }


def _require() -> None:
    if _C is None:
        raise RuntimeError(LOAD_ERROR)


def significance_from_probs(
    probs: torch.Tensor, mask: torch.Tensor, q_offset: int = 0, exclude_self: bool = False
) -> torch.Tensor:
    """Significance contributed by a block of query rows of materialised attention probabilities.

    ``out[b, w] = sum_h sum_{q : mask[b, q_offset + q]} probs[b, h, q, w]``, without the terms
    ``w == q_offset + q`` when ``exclude_self``. Summing the results over consecutive blocks that
    cover all N rows gives the significance of
    :func:`~powerbert_kernels.ops.attention_with_significance_ref`.

    Args:
        probs: (B, H, n_q, N) float32, float16 or bfloat16, contiguous in its last dimension: the
            probabilities of query rows ``q_offset .. q_offset + n_q - 1``.
        mask: (B, N) bool, True = real token.
        q_offset: position of the block's first query row.
        exclude_self: leave each vector's attention to itself out.

    Returns:
        (B, N) float32, accumulated in float32.
    """
    _require()
    return torch.ops.powerbert.significance_from_probs(probs, mask, int(q_offset), bool(exclude_self))


def select_gather_ext(
    hidden: torch.Tensor, significance: torch.Tensor, mask: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The extension's select-and-gather (same semantics and results as
    :func:`~powerbert_kernels.ops.select_gather_ref`).

    Args:
        hidden: (B, N, D) float32, float16 or bfloat16, contiguous in its last dimension.
        significance: (B, N) float32.
        mask: (B, N) bool, True = real token.
        keep: vectors kept per row, 1 <= keep <= N.

    Returns:
        hidden_kept (B, keep, D), mask_kept (B, keep) bool, indices (B, keep) int64 ascending.
    """
    _require()
    return torch.ops.powerbert.select_gather_ext(hidden, significance, mask, int(keep))


def register() -> None:
    """Register the ``ext`` implementations of the public ops with the dispatcher.

    Raises:
        RuntimeError: the extension is not built or failed to load (the message says why).
    """
    _require()
    from ._backend import register as _register

    _register()


def available_backends() -> list[str]:
    """The backends installed and loadable here, in dispatch order (e.g. ``['ext', 'torch']``).

    A listed backend may still decline some calls (a device or dtype it does not serve); see
    :func:`backend_report` and :func:`powerbert_kernels.ops.explain`.
    """
    from ..ops import _dispatch

    ops = ("attention_with_significance", "select_gather")
    return [name for name in _dispatch.BACKENDS if all(name in _dispatch.registered_backends(op) for op in ops)]


def backend_report() -> str:
    """One line per backend: whether it is available here and, if not, why."""
    from ..ops import _dispatch

    available = available_backends()
    lines = []
    for name in _dispatch.BACKENDS:
        if name in available:
            detail = ""
            if name == "ext":
                info = build_info()
                detail = " (C++ CPU kernels" + (
                    f"; CUDA kernels for {info['cuda_archs']})" if info["cuda"] else "; no CUDA kernels)"
                )
            lines.append(f"{name}: available{detail}")
        else:
            reason = _dispatch._MISSING_REASON.get(name, "not registered")
            lines.append(f"{name}: unavailable: {reason}")
    return "\n".join(lines)


__all__ = [
    "LOAD_ERROR",
    "available_backends",
    "backend_report",
    "build_info",
    "is_loaded",
    "register",
    "select_gather_ext",
    "significance_from_probs",
]
