"""Fake (meta) and autograd registrations of the extension's C++ operators.

The C++ side defines the schemas and the CPU/CUDA kernels (``TORCH_LIBRARY(powerbert, ...)``); this
module adds what ``torch.compile`` and autograd need. Imported only once ``powerbert_kernels._C`` is.
"""

from __future__ import annotations

import torch


@torch.library.register_fake("powerbert::significance_from_probs")
def _significance_from_probs_fake(
    probs: torch.Tensor, mask: torch.Tensor, q_offset: int = 0, exclude_self: bool = False
) -> torch.Tensor:
    torch._check(probs.dim() == 4, lambda: f"probs must have shape (B, H, n_q, N), got {tuple(probs.shape)}")
    return probs.new_empty(probs.shape[0], probs.shape[3], dtype=torch.float32)


@torch.library.register_fake("powerbert::select_gather_ext")
def _select_gather_ext_fake(
    hidden: torch.Tensor, significance: torch.Tensor, mask: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch._check(hidden.dim() == 3, lambda: f"hidden must have shape (B, N, D), got {tuple(hidden.shape)}")
    B, N, D = hidden.shape
    torch._check(1 <= keep, lambda: f"keep must be at least 1, got {keep}")
    torch._check(keep <= N, lambda: f"keep must be at most N = {N}, got {keep}")
    return (
        hidden.new_empty(B, keep, D),
        mask.new_empty(B, keep),
        hidden.new_empty(B, keep, dtype=torch.int64),
    )


@torch.library.register_fake("powerbert::attention_significance_cpu")
def _attention_significance_cpu_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, exclude_self: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    torch._check(q.dim() == 4, lambda: f"q must have shape (B, N, H, d), got {tuple(q.shape)}")
    B, N, H, d = q.shape
    return q.new_empty(B, N, H * d), q.new_empty(B, N, dtype=torch.float32)


# Significance is a masked sum of probabilities, so its gradient is the incoming gradient broadcast
# back over heads and voting rows (the diagonal left out when exclude_self).
def _significance_setup_context(ctx, inputs, output) -> None:
    probs, mask, q_offset, exclude_self = inputs
    ctx.save_for_backward(mask)
    ctx.probs_shape = probs.shape
    ctx.probs_dtype = probs.dtype
    ctx.q_offset = q_offset
    ctx.exclude_self = exclude_self


def _significance_backward(ctx, grad: torch.Tensor):
    (mask,) = ctx.saved_tensors
    B, H, n_q, N = ctx.probs_shape
    votes = mask[:, ctx.q_offset : ctx.q_offset + n_q].to(grad.dtype)
    grad_probs = votes[:, None, :, None] * grad[:, None, None, :]  # (B, 1, n_q, N)
    if ctx.exclude_self:
        torch.diagonal(grad_probs, offset=ctx.q_offset, dim1=-2, dim2=-1).zero_()
    return grad_probs.expand(B, H, n_q, N).to(ctx.probs_dtype), None, None, None


torch.library.register_autograd(
    "powerbert::significance_from_probs", _significance_backward, setup_context=_significance_setup_context
)


# Select-and-gather copies rows, so its gradient scatters the kept rows' gradients back.
def _select_gather_setup_context(ctx, inputs, output) -> None:
    hidden = inputs[0]
    ctx.save_for_backward(output[2])
    ctx.hidden_shape = hidden.shape
    ctx.mark_non_differentiable(output[1], output[2])


def _select_gather_backward(ctx, grad_hidden_kept: torch.Tensor, grad_mask, grad_indices):
    (indices,) = ctx.saved_tensors
    B, N, D = ctx.hidden_shape
    grad_hidden = grad_hidden_kept.new_zeros(B, N, D)
    grad_hidden.scatter_(1, indices[:, :, None].expand(-1, -1, D), grad_hidden_kept)
    return grad_hidden, None, None, None


torch.library.register_autograd(
    "powerbert::select_gather_ext", _select_gather_backward, setup_context=_select_gather_setup_context
)
