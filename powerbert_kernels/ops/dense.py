"""Dense (linear) layers with their epilogue: bias, GELU, residual and LayerNorm in one op.

An encoder layer's dense layers are, in ATen's eager CPU execution, an ``addmm`` (which first copies the
broadcast bias into its output), then GELU, or an add and a layer norm: each a parallel region ending in
a barrier that waits for every thread, and each one more pass over the output. On a machine shared
with other processes, a barrier waits for a thread the OS has descheduled, up to a scheduler time slice;
a pruned layer's small matrices make those waits a large part of its time. :func:`dense` and
:func:`dense_projections` run the same arithmetic as one call of the extension's CPU kernel
(``powerbert::dense_cpu``, one task pool call with no barrier; see ``csrc/dense_cpu.cpp``) where it can
run, and as the plain PyTorch composition everywhere else.

This is an optional fusion: only the ``ext`` backend implements it (CPU, float32, inference). Elsewhere,
and whenever the call needs gradients, runs under ``torch.compile``/``torch.export`` (whose compilers
fuse the composition themselves and whose graphs must hold standard ops) or is forced to a backend
without it, :func:`dense_ref` runs: the composition the stock Hugging Face modules run, operation for
operation, so a patched model on that path computes exactly what the stock model computes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import dispatch
from ._checks import check_float, check_same_device

OP = "dense"
ACTIVATIONS = ("none", "gelu")


@dataclass(frozen=True)
class DenseInputs(dispatch.OpInputs):
    """A call of ``dense``: (rows, in_features) input, outputs of ``out_features`` columns in all."""

    rows: int
    in_features: int
    out_features: int
    needs_grad: bool

    def describe(self) -> str:
        return (
            f"hidden (rows, K) = ({self.rows}, {self.in_features}) {super().describe()}, "
            f"{self.out_features} output features" + (", gradients needed" if self.needs_grad else "")
        )


def dense_ref(
    hidden: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    activation: str = "none",
    residual: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    eps: float = 1e-12,
) -> list[torch.Tensor]:
    """Pure-PyTorch reference of :func:`dense` and :func:`dense_projections`: what HF's modules run.

    Args:
        hidden: (..., K).
        weights: per projection (N_i, K); biases: per projection (N_i,) or None.
        activation: ``"none"`` or ``"gelu"`` (exact, erf-based), applied after the bias.
        residual: (..., N) added after the activation (one projection only).
        norm_weight, norm_bias: (N,) LayerNorm affine parameters, applied last with ``eps``.

    Returns:
        one (..., N_i) tensor per projection.
    """
    outputs = [F.linear(hidden, w, b) for w, b in zip(weights, biases, strict=True)]
    if activation == "gelu":
        outputs = [F.gelu(y) for y in outputs]
    if residual is not None:
        outputs = [outputs[0] + residual]
    if norm_weight is not None or norm_bias is not None:
        y = outputs[0]
        outputs = [F.layer_norm(y, (y.shape[-1],), norm_weight, norm_bias, eps)]
    return outputs


def _check(hidden, weights, biases, activation, residual, norm_weight, norm_bias, eps) -> None:
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 1:
        raise ValueError(f"hidden must be a tensor of shape (..., K), got {getattr(hidden, 'shape', type(hidden))}")
    check_float("hidden", hidden)
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError(
            f"weights and biases must be non-empty and of the same length, got {len(weights)} and {len(biases)}"
        )
    K = hidden.shape[-1]
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.shape[1] != K:
            raise ValueError(f"weights[{i}] must have shape (N, K={K}), got {tuple(getattr(w, 'shape', ()))}")
        if w.dtype != hidden.dtype:
            raise TypeError(f"weights[{i}] must have the dtype of hidden ({hidden.dtype}), got {w.dtype}")
        check_same_device(f"weights[{i}]", w, hidden.device)
        if b is not None and (b.dim() != 1 or b.shape[0] != w.shape[0]):
            raise ValueError(f"biases[{i}] must have shape ({w.shape[0]},), got {tuple(b.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if (norm_weight is None) != (norm_bias is None):
        raise ValueError("norm_weight and norm_bias must be given together (or neither)")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    if residual is not None:
        expected = (*hidden.shape[:-1], weights[0].shape[0])
        if tuple(residual.shape) != expected:
            raise ValueError(f"residual must have the output's shape {expected}, got {tuple(residual.shape)}")
        check_same_device("residual", residual, hidden.device)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _run(hidden, weights, biases, activation, residual, norm_weight, norm_bias, eps, backend) -> list[torch.Tensor]:
    args = (hidden, weights, biases, activation, residual, norm_weight, norm_bias, eps)
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return dense_ref(*args)
    _check(*args)
    needs_grad = _needs_grad(hidden, residual, norm_weight, norm_bias, *weights, *biases)
    name = _backend(dispatch.requested_backend(backend), hidden.device, hidden.dtype, needs_grad)
    return dispatch.implementation(OP, name)(*args)


@functools.lru_cache(maxsize=256)
def _backend(forced: str | None, device: torch.device, dtype: torch.dtype, needs_grad: bool) -> str:
    # Whether a backend runs the fusion depends on the device, the dtype and gradients alone, never on
    # the sizes: the choice is made once per combination. A dense layer is called four times per encoder
    # layer, and a per-call choice cost more than the fused kernel's own overhead on small inputs.
    inputs = DenseInputs(device, dtype, rows=0, in_features=0, out_features=0, needs_grad=needs_grad)
    return dispatch.resolve_optional(OP, inputs, forced)


def dense(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str = "none",
    residual: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    eps: float = 1e-12,
    backend: str | None = None,
) -> torch.Tensor:
    """``LayerNorm(act(hidden @ weight.T + bias) + residual)``, each part optional, as one op.

    Args:
        hidden: (..., K) float.
        weight: (N, K), an ``nn.Linear`` weight; bias: (N,) or None.
        activation: ``"none"`` or ``"gelu"`` (the exact, erf-based GELU BERT uses).
        residual: (..., N) or None, added after the activation.
        norm_weight, norm_bias: (N,) LayerNorm parameters (both or neither); eps: its epsilon.
        backend: ``"ext"``, ``"torch"`` or ``None`` (``POWERBERT_BACKEND``, else automatic). A backend
            that cannot run the call (no fusion, another device or dtype, gradients needed) runs the
            reference instead: the fusion is an optimisation with the reference's semantics.

    Returns:
        (..., N) in the dtype of ``hidden``.
    """
    return _run(hidden, [weight], [bias], activation, residual, norm_weight, norm_bias, eps, backend)[0]


def dense_projections(
    hidden: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    *,
    backend: str | None = None,
) -> list[torch.Tensor]:
    """Several projections of one input (e.g. query, key and value) with their biases, as one op.

    Args:
        hidden: (..., K) float.
        weights: per projection (N_i, K); biases: per projection (N_i,) or None.
        backend: as for :func:`dense`.

    Returns:
        one (..., N_i) tensor per projection. The fused kernel writes them side by side into one buffer,
        so they are views with a row stride of sum(N_i) (last dimension contiguous).
    """
    return _run(hidden, list(weights), list(biases), "none", None, None, None, 1e-12, backend)


def dense_flops(rows: int, in_features: int, out_features: int) -> int:
    """Multiply-add FLOPs of a dense call: 2 * rows * in_features * out_features (epilogues not counted,
    as PyTorch's FLOP counter does not count them)."""
    return 2 * rows * in_features * out_features
