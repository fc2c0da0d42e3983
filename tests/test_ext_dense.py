"""The extension's fused CPU dense layer (``powerbert::dense_cpu``) and its task pool.

Error rule (the kernels' rule, ``tests/tolerance.py``): against a float64 computation, the fused op may
be off by at most twice what PyTorch's own float32 composition is off, plus a small floor. Outputs are
checked after the allocator was filled with NaN, so an element the kernel never writes fails.
"""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_close_to_reference

from powerbert_kernels import ops
from powerbert_kernels.ops import dense_ref
from powerbert_kernels.ops.dense import DenseInputs

pytestmark = pytest.mark.usefixtures("require_extension")


def fused(*args):
    return torch.ops.powerbert.dense_cpu(*args)


def make_case(rows: tuple[int, ...], K: int, outs: tuple[int, ...], kind: str, g: torch.Generator):
    """Inputs of one call: hidden (*rows, K), weights/biases per output, and the epilogue of ``kind``
    (``plain``, ``gelu``, ``norm``: residual + LayerNorm, ``residual``: residual only, ``nobias``)."""
    hidden = torch.randn(*rows, K, generator=g)
    weights = [torch.randn(n, K, generator=g) * K**-0.5 for n in outs]
    biases = [None if kind == "nobias" else torch.randn(n, generator=g) for n in outs]
    N = sum(outs)
    residual = torch.randn(*rows, N, generator=g) if kind in ("norm", "residual") else None
    norm = (torch.randn(N, generator=g), torch.randn(N, generator=g)) if kind == "norm" else (None, None)
    activation = "gelu" if kind == "gelu" else "none"
    return hidden, weights, biases, activation, residual, norm[0], norm[1], 1e-12 if kind != "norm" else 1e-5


def reference(hidden, weights, biases, activation, residual, norm_weight, norm_bias, eps, dtype):
    cast = (lambda t: None if t is None else t.to(dtype)) if dtype is not None else (lambda t: t)
    outs = dense_ref(
        cast(hidden),
        [cast(w) for w in weights],
        [cast(b) for b in biases],
        activation,
        cast(residual),
        cast(norm_weight),
        cast(norm_bias),
        eps,
    )
    return torch.cat(outs, -1)


SHAPES = [
    ((1, 1), 8, (8,)),
    ((1, 7), 24, (40,)),
    ((3, 5), 33, (17, 17, 17)),
    ((16, 3), 96, (96, 96, 96)),
    ((2, 61), 64, (256,)),
    ((5, 97), 128, (128,)),
    ((300,), 96, (200,)),
    ((4, 130), 384, (1536,)),
    ((2, 129), 1536, (384,)),
]


# A residual and LayerNorm follow a single weight; the plain, GELU and bias-free epilogues take several.
CASES = [
    (rows, K, outs, kind)
    for rows, K, outs in SHAPES
    for kind in ("plain", "gelu", "norm", "residual", "nobias")
    if len(outs) == 1 or kind not in ("norm", "residual")
]


@pytest.mark.parametrize("rows, K, outs, kind", CASES)
def test_matches_reference_within_twice_its_error(rows, K, outs, kind):
    g = torch.Generator().manual_seed(sum(rows) * 1000 + K + sum(outs) + len(kind))
    case = make_case(rows, K, outs, kind, g)
    torch.full((2 * max(1, torch.Size(rows).numel()) * sum(outs),), float("nan"))  # poison the allocator
    got = fused(*case)
    assert got.shape == (*rows, sum(outs)) and got.dtype == torch.float32
    exact = reference(*case, torch.float64)
    same_dtype = reference(*case, None)
    assert_close_to_reference(f"dense {kind}", got, exact, same_dtype, torch.float32)


def test_public_ops_run_the_fused_kernel_and_match_the_torch_backend():
    g = torch.Generator().manual_seed(1)
    hidden, weights, biases, *_ = make_case((4, 9), 64, (32, 32, 32), "plain", g)
    with torch.no_grad():
        got = ops.dense_projections(hidden, weights, biases)
        want = ops.dense_projections(hidden, weights, biases, backend="torch")
    # Views of one buffer: the fused kernel ran (the reference returns three separate tensors).
    assert got[0].untyped_storage().data_ptr() == got[2].untyped_storage().data_ptr()
    assert want[0].untyped_storage().data_ptr() != want[2].untyped_storage().data_ptr()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    residual = torch.randn(4, 9, 32, generator=g)
    gamma, beta = torch.randn(32, generator=g), torch.randn(32, generator=g)
    kwargs = dict(residual=residual, norm_weight=gamma, norm_bias=beta, eps=1e-12)
    torch.testing.assert_close(
        ops.dense(hidden, weights[0], biases[0], **kwargs),
        ops.dense(hidden, weights[0], biases[0], backend="torch", **kwargs),
        rtol=1e-5,
        atol=1e-5,
    )


def test_needs_grad_dtype_and_forced_backends_run_the_reference():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    explain = ops.explain(
        "dense", DenseInputs(x.device, x.dtype, rows=3, in_features=16, out_features=8, needs_grad=True)
    )
    assert any("gradients" in reason for reason in explain["ext"])
    y = ops.dense(x, lin.weight, lin.bias, activation="gelu")  # grad enabled, weights require grad
    assert y.requires_grad
    y.sum().backward()
    torch.testing.assert_close(lin.weight.grad, torch.autograd.grad(F.gelu(lin(x)).sum(), lin.weight)[0])
    with torch.no_grad():  # bfloat16: no fused kernel, the reference runs
        xb, wb = x.bfloat16(), lin.weight.bfloat16()
        assert torch.equal(ops.dense(xb, wb, None), F.linear(xb, wb))
        # A forced backend without the fusion (triton here) runs the reference instead of failing.
        assert torch.equal(ops.dense(x, lin.weight, lin.bias, backend="triton"), F.linear(x, lin.weight, lin.bias))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(activation="relu"), "activation must be one of"),
        (dict(norm_weight=torch.ones(8)), "norm_weight and norm_bias must be given together"),
        (dict(residual=torch.ones(3, 7)), "residual must have the output's shape"),
        (dict(eps=0.0), "eps must be positive"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    lin = torch.nn.Linear(16, 8)
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        ops.dense(torch.randn(3, 16), lin.weight, lin.bias, **kwargs)


def test_the_compiled_op_checks_its_arguments():
    x, w = torch.randn(3, 16), torch.randn(8, 16)
    with pytest.raises(RuntimeError, match=r"weights\[0\] must have shape \(N, K=16\)"):
        fused(x, [torch.randn(8, 15)], [None], "none", None, None, None, 1e-12)
    with pytest.raises(RuntimeError, match="x must be float32"):
        fused(x.double(), [w], [None], "none", None, None, None, 1e-12)
    with pytest.raises(RuntimeError, match="biases must have one entry"):
        fused(x, [w], [], "none", None, None, None, 1e-12)
    with pytest.raises(RuntimeError, match="weights\\[0\\] must be contiguous"):
        fused(x, [torch.randn(16, 8).t()], [None], "none", None, None, None, 1e-12)


def test_results_do_not_depend_on_the_threads_or_the_rest_of_the_batch():
    g = torch.Generator().manual_seed(3)
    case = make_case((6, 77), 192, (768,), "norm", g)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused(*case)
        torch.set_num_threads(max(2, previous))
        many = fused(*case)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, many)
    hidden, weights, biases, act, residual, gamma, beta, eps = case
    alone = fused(hidden[2:3], weights, biases, act, residual[2:3], gamma, beta, eps)
    torch.testing.assert_close(alone, one[2:3], rtol=1e-5, atol=1e-5)


def test_python_threads_may_share_the_pool():
    g = torch.Generator().manual_seed(4)
    case = make_case((8, 64), 256, (1024,), "gelu", g)
    want = fused(*case)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(fused(*case))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    assert all(torch.equal(r, want) for r in results)


def _forked_child(queue, case) -> None:
    # Only the extension's op runs in the child: an OpenMP region there would hang in GNU OpenMP after
    # the parent used its threads (PyTorch's own limitation, which DataLoader workers avoid likewise).
    queue.put(fused(*case).flatten().tolist())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_working_pool():
    g = torch.Generator().manual_seed(5)
    case = make_case((4, 64), 256, (512,), "plain", g)
    want = fused(*case).flatten().tolist()  # the parent's pool threads exist now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_forked_child, args=(queue, case))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and got == want


def test_flop_counter_counts_the_fused_gemms():
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(6)
    hidden, weights, biases, *_ = make_case((2, 10), 64, (48, 48, 48), "plain", g)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ops.dense_projections(hidden, weights, biases)
    assert counter.get_total_flops() == ops.dense_flops(20, 64, 144)
