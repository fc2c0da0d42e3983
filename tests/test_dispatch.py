"""Backend selection: the argument, POWERBERT_BACKEND, and the errors of a backend that cannot run."""

from __future__ import annotations

import pytest
import torch

from powerbert_kernels import ops
from powerbert_kernels.ops import _dispatch


def _inputs():
    q = torch.randn(1, 5, 2, 4)
    return q, q.clone(), q.clone(), torch.ones(1, 5, dtype=torch.bool)


def test_torch_backend_by_argument_and_environment(monkeypatch):
    facts = _dispatch.CallFacts(torch.device("cpu"), torch.float32)
    assert ops.resolve("attention_with_significance", facts, "torch") == "torch"
    monkeypatch.setenv("POWERBERT_BACKEND", "torch")
    assert ops.resolve("select_gather", facts) == "torch"
    out, sig = ops.attention_with_significance(*_inputs())
    assert out.shape == (1, 5, 8)


def test_unknown_backend_names_the_source(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.attention_with_significance(*_inputs(), backend="cuda")
    monkeypatch.setenv("POWERBERT_BACKEND", "fast")
    with pytest.raises(ValueError, match="POWERBERT_BACKEND must be one of"):
        ops.attention_with_significance(*_inputs())


def test_forced_backend_that_cannot_run_lists_every_reason(monkeypatch):
    monkeypatch.setattr(_dispatch, "_REGISTRY", {op: dict(impls) for op, impls in _dispatch._REGISTRY.items()})
    _dispatch.register(
        "select_gather",
        "triton",
        lambda *a: None,
        unsupported=lambda f: ["not a CUDA device", "float64 is not supported"],
    )
    facts = _dispatch.CallFacts(torch.device("cpu"), torch.float32)
    with pytest.raises(ops.BackendUnavailableError) as err:
        ops.resolve("select_gather", facts, "triton")
    assert "not a CUDA device" in str(err.value) and "float64 is not supported" in str(err.value)
    assert ops.resolve("select_gather", facts) != "triton"


def test_forced_only_backend_is_never_picked_automatically(monkeypatch):
    monkeypatch.setattr(_dispatch, "_REGISTRY", {op: dict(impls) for op, impls in _dispatch._REGISTRY.items()})
    _dispatch.register("select_gather", "triton", lambda *a: None, not_automatic=lambda f: ["interpreter"])
    facts = _dispatch.CallFacts(torch.device("cpu"), torch.float32)
    assert ops.resolve("select_gather", facts, "triton") == "triton"
    assert ops.resolve("select_gather", facts) != "triton"
    assert ops.explain("select_gather", facts)["triton"] == ["interpreter"]


def test_missing_backend_reason_is_reported(monkeypatch):
    monkeypatch.setattr(_dispatch, "_REGISTRY", {"select_gather": {}})
    facts = _dispatch.CallFacts(torch.device("cpu"), torch.float32)
    with pytest.raises(ops.BackendUnavailableError, match="no backend can run select_gather"):
        ops.resolve("select_gather", facts)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda q, k, v, m: ops.attention_with_significance(q[0], k, v, m), r"q must have shape \(B, N, H, d\)"),
        (lambda q, k, v, m: ops.attention_with_significance(q, k[:, :4], v, m), "k must have the shape of q"),
        (lambda q, k, v, m: ops.attention_with_significance(q, k.double(), v, m), "q|k"),
        (
            lambda q, k, v, m: ops.attention_with_significance(q.double(), k.double(), v.double(), m),
            "q must be float16, bfloat16 or float32",
        ),
        (lambda q, k, v, m: ops.attention_with_significance(q, k, v, m[:, :4]), r"key_padding_mask must have shape"),
        (lambda q, k, v, m: ops.attention_with_significance(q, k, v, m.long()), "key_padding_mask must be a bool"),
        (lambda q, k, v, m: ops.attention_with_significance(q, k, v, m, scale=-1.0), "scale must be a positive"),
        (
            lambda q, k, v, m: ops.attention_with_significance(
                q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3), m
            ),
            "contiguous in its last dimension",
        ),
    ],
)
def test_attention_bad_input_names_the_argument(call, match):
    q = torch.randn(2, 5, 2, 4)
    with pytest.raises((ValueError, TypeError), match=match):
        call(q, q.clone(), q.clone(), torch.ones(2, 5, dtype=torch.bool))


def test_attention_rejects_last_dim_strides():
    q = torch.randn(2, 5, 2, 8)[..., ::2]
    with pytest.raises(ValueError, match="q must be contiguous in its last dimension"):
        ops.attention_with_significance(q, q, q, torch.ones(2, 5, dtype=torch.bool))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(keep=0), "keep must be between 1 and N=6"),
        (dict(keep=7), "keep must be between 1 and N=6"),
        (dict(keep=2.0), "keep must be an int"),
        (dict(significance=torch.rand(2, 5)), r"significance must have shape \(B, N\)"),
        (dict(significance=torch.ones(2, 6, dtype=torch.long)), "significance must be a float"),
        (dict(mask=torch.ones(2, 5, dtype=torch.bool)), r"mask must have shape \(B, N\)"),
        (dict(mask=torch.ones(2, 6)), "mask must be a bool"),
        (dict(hidden=torch.randn(2, 6)), r"hidden must have shape \(B, N, D\)"),
        (dict(hidden=torch.randint(0, 3, (2, 6, 3))), "hidden must be float16, bfloat16 or float32"),
    ],
)
def test_select_gather_bad_input_names_the_argument(kwargs, match):
    args = dict(
        hidden=torch.randn(2, 6, 3), significance=torch.rand(2, 6), mask=torch.ones(2, 6, dtype=torch.bool), keep=3
    )
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        ops.select_gather(args["hidden"], args["significance"], args["mask"], args["keep"])
