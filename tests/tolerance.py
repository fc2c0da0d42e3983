"""The tests' one error bound for a kernel against its float32 reference, and a message that shows it.

flash-attention's rule: a kernel may be off the float32 reference by at most twice what PyTorch's own
computation in the input dtype is off, plus a small floor relative to the reference's magnitude (so
float32, where PyTorch's error can be 0, still has room for reordered sums). On failure the message says
how many elements are outside, where the worst ones are and by how much, as Liger-Kernel's
``assert_verbose_allclose`` does.
"""

from __future__ import annotations

import torch

FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
"""Relative floor of the bound per input dtype (times max(1, the reference's largest magnitude))."""


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_to_reference(
    name: str, got: torch.Tensor, reference: torch.Tensor, same_dtype: torch.Tensor, dtype: torch.dtype, worst: int = 5
) -> None:
    """Assert ``|got - reference| <= 2 * max|same_dtype - reference| + FLOOR[dtype] * max(1, max|reference|)``.

    Args:
        name: what is compared, for the message (``"out"``, ``"significance"``).
        got: the kernel's result.
        reference: the float32 reference's result, same shape.
        same_dtype: PyTorch's result computed in the input dtype (the error yardstick), same shape.
        dtype: the input dtype, which picks the floor.
        worst: how many of the largest differences the message lists.
    """
    got, reference, same_dtype = (t.detach().cpu().double() for t in (got, reference, same_dtype))
    if got.shape != reference.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)} != reference shape {tuple(reference.shape)}")
    scale = max(1.0, reference.abs().max().item() if reference.numel() else 0.0)
    bound = 2 * max_err(same_dtype, reference) + FLOOR[dtype] * scale
    diff = (got - reference).abs().nan_to_num(nan=float("inf"))
    outside = diff > bound
    if not outside.any():
        return
    flat = diff.flatten()
    order = flat.argsort(descending=True)[: min(worst, int(outside.sum()))]
    lines = [
        f"{name}: {int(outside.sum())} of {diff.numel()} elements differ from the reference by more than "
        f"{bound:.3g} (2 x PyTorch's {str(dtype).removeprefix('torch.')} error "
        f"{max_err(same_dtype, reference):.3g} + floor); the largest:"
    ]
    for i in order.tolist():
        index = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), diff.shape))
        lines.append(
            f"  at {index}: got {got[index].item():.6g}, reference {reference[index].item():.6g}, "
            f"|diff| {flat[i].item():.3g}"
        )
    raise AssertionError("\n".join(lines))
