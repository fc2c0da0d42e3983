"""Backend selection: the argument, POWERBERT_BACKEND, and the errors of a backend that cannot run."""

from __future__ import annotations

import pytest
import torch

from powerbert_kernels import ops
from powerbert_kernels.ops import dispatch


def _inputs():
    q = torch.randn(1, 5, 2, 4)
    return q, q.clone(), q.clone(), torch.ones(1, 5, dtype=torch.bool)


CPU = torch.device("cpu")
GATHER = ops.SelectGatherInputs(CPU, torch.float32, batch=2, seq_len=6, hidden_size=3, keep=3)
ATTENTION = ops.AttentionInputs(CPU, torch.float32, batch=1, seq_len=5, heads=2, head_dim=4)


def _with_backend(monkeypatch, impl: type[dispatch.OpBackend]) -> None:
    """Make ``impl`` the registered implementation of its op and backend for this test."""
    dispatch.load_backends()
    registry = {op: dict(impls) for op, impls in dispatch._REGISTRY.items()}
    registry.setdefault(impl.op, {})[impl.name] = impl
    monkeypatch.setattr(dispatch, "_REGISTRY", registry)


def test_torch_backend_by_argument_and_environment(monkeypatch):
    assert ops.resolve("attention_with_significance", ATTENTION, "torch") == "torch"
    monkeypatch.setenv("POWERBERT_BACKEND", "torch")
    assert ops.resolve("select_gather", GATHER) == "torch"
    out, sig = ops.attention_with_significance(*_inputs())
    assert out.shape == (1, 5, 8)


def test_unknown_backend_names_the_source(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.attention_with_significance(*_inputs(), backend="cuda")
    monkeypatch.setenv("POWERBERT_BACKEND", "fast")
    with pytest.raises(ValueError, match="POWERBERT_BACKEND must be one of"):
        ops.attention_with_significance(*_inputs())


class _AnyGather(dispatch.OpBackend):
    op = "select_gather"
    name = "triton"
    devices = None


class _CudaOnlyGather(_AnyGather):
    devices = frozenset({"cuda"})
    dtypes = (torch.float16,)
    max_seq_len = 4


def test_forced_backend_that_cannot_run_lists_every_reason_and_the_inputs(monkeypatch):
    _with_backend(monkeypatch, _CudaOnlyGather)
    with pytest.raises(ops.BackendUnavailableError) as err:
        ops.resolve("select_gather", GATHER, "triton")
    assert str(err.value) == (
        "backend 'triton' cannot run select_gather for hidden (B, N, D) = (2, 6, 3) float32 on cpu, keep=3: "
        "device type 'cpu' is not supported (only cuda); dtype float32 is not supported (only float16); "
        "sequence length 6 is longer than 4"
    )
    assert ops.resolve("select_gather", GATHER) != "triton"


class _WideGather(_AnyGather):
    @classmethod
    def not_supported_reasons(cls, inputs):
        return super().not_supported_reasons(inputs) + ([f"keep {inputs.keep} is odd"] if inputs.keep % 2 else [])


def test_subclass_extends_the_reasons_with_super(monkeypatch):
    _with_backend(monkeypatch, _WideGather)
    assert ops.explain("select_gather", GATHER)["triton"] == ["keep 3 is odd"]
    even = ops.SelectGatherInputs(CPU, torch.float64, batch=2, seq_len=6, hidden_size=3, keep=2)
    assert ops.explain("select_gather", even)["triton"] == [
        "dtype float64 is not supported (only float16, bfloat16, float32)"
    ]
    even = ops.SelectGatherInputs(CPU, torch.float16, batch=2, seq_len=6, hidden_size=3, keep=2)
    assert ops.explain("select_gather", even)["triton"] == []
    assert ops.resolve("select_gather", even) == "triton"


class _InterpretedGather(_AnyGather):
    forced_only = True
    forced_only_reason = "interpreter"


def test_forced_only_backend_is_never_picked_automatically(monkeypatch):
    _with_backend(monkeypatch, _InterpretedGather)
    assert ops.resolve("select_gather", GATHER, "triton") == "triton"
    assert ops.resolve("select_gather", GATHER) != "triton"
    assert ops.explain("select_gather", GATHER)["triton"] == ["interpreter"]


def test_no_backend_lists_why_each_was_skipped(monkeypatch):
    dispatch.load_backends()
    monkeypatch.setattr(dispatch, "_REGISTRY", {"select_gather": {}})
    monkeypatch.setattr(dispatch, "_MISSING", {"triton": "No module named 'triton'"})
    with pytest.raises(ops.BackendUnavailableError) as err:
        ops.resolve("select_gather", GATHER)
    assert str(err.value) == (
        "no backend can run select_gather for hidden (B, N, D) = (2, 6, 3) float32 on cpu, keep=3: "
        "triton: it is not available here: No module named 'triton' | "
        "ext: it has no implementation of select_gather | torch: it has no implementation of select_gather"
    )


def test_backend_report_and_missing_reason(monkeypatch):
    assert "torch" in ops.available_backends()
    assert ops.missing_reason("torch") is None
    report = ops.backend_report().splitlines()
    assert [line.split(":")[0] for line in report] == list(ops.BACKENDS)
    assert report[2].startswith("torch: available")
    dispatch.load_backends()
    monkeypatch.setattr(dispatch, "_MISSING", {"ext": "powerbert_kernels._C is not built"})
    monkeypatch.setattr(
        dispatch, "_REGISTRY", {op: {"torch": impls["torch"]} for op, impls in dispatch._REGISTRY.items()}
    )
    assert ops.available_backends() == ["torch"]
    assert ops.missing_reason("ext") == "powerbert_kernels._C is not built"
    assert "ext: unavailable: powerbert_kernels._C is not built" in ops.backend_report().splitlines()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.missing_reason("cuda")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda q, k, v, m: ops.attention_with_significance(q[0], k, v, m), r"q must have shape \(B, N, H, d\)"),
        (lambda q, k, v, m: ops.attention_with_significance(q, k[:, :4], v, m), "k must have the shape of q"),
        (
            lambda q, k, v, m: ops.attention_with_significance(q, k.double(), v, m),
            r"k must have the dtype of q \(torch.float32\), got torch.float64",
        ),
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
