"""Deployment: torch.compile with dynamic shapes, torch.export, ONNX export run by ONNX Runtime."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertModel

from powerbert_kernels import ExportError, apply_power_bert, export_onnx, export_program, verify_onnx
from powerbert_kernels.cli import main
from powerbert_kernels.export import example_inputs
from powerbert_kernels.models import SoftExtract
from powerbert_kernels.ops import attention_with_significance_ref, select_gather_ref
from powerbert_kernels.ops.decompositions import attention_with_significance_decomposed, select_gather_decomposed

RETENTION = [64, 48, 32, 16, 8, 4]
"""For MiniLM (6 layers): over lengths 9..128 every layer switches between keeping all and dropping."""


def _classifier(path):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="sdpa").eval()


def _batch(model, batch, seq_len, padding="right", seed=0):
    return example_inputs(model, batch, seq_len, padding=padding, seed=seed)


def _tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(config, add_pooling_layer=False).eval()


# ----------------------------------------------------------------------------------------------------
# The decompositions used for export equal the references.


@pytest.mark.parametrize("exclude_self", [False, True])
def test_attention_decomposition_equals_reference(exclude_self):
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 11, 2, 8) for _ in range(3))
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, :4] = False  # left padding
    out, sig = attention_with_significance_decomposed(q, k, v, mask, 8**-0.5, exclude_self)
    ref_out, ref_sig = attention_with_significance_ref(q, k, v, mask, exclude_self=exclude_self)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sig, ref_sig, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("keep", [1, 4, 9, 11])
def test_select_gather_decomposition_equals_reference(keep):
    torch.manual_seed(1)
    hidden = torch.randn(4, 11, 5)
    significance = torch.rand(4, 11) * 3
    mask = torch.ones(4, 11, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, :5] = False  # left padding: CLS at position 5
    mask[3, :2] = False
    mask[3, 5:] = False  # only 3 real tokens: padding is kept when keep > 3
    got = select_gather_decomposed(hidden, significance, mask, keep)
    expected = select_gather_ref(hidden, significance, mask, keep)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


# ----------------------------------------------------------------------------------------------------
# torch.compile: no graph per batch size or per length.


def _compiled_graphs(model, shapes):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    worst = 0.0
    with torch.no_grad():
        for i, (batch, seq_len) in enumerate(shapes):
            inputs = _batch(model, batch, seq_len, padding="left" if i % 2 else "right", seed=i)
            got = compiled(**inputs).logits
            expected = model(**inputs).logits
            worst = max(worst, (got - expected).abs().max().item())
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return graphs, worst


def test_compiled_patched_model_recompiles_no_more_than_stock(minilm_path):
    shapes = [(2, 9), (3, 17), (5, 40), (8, 77), (16, 128), (1, 60), (3, 100)]
    stock_graphs, stock_diff = _compiled_graphs(_classifier(minilm_path), shapes)
    patched = apply_power_bert(_classifier(minilm_path), RETENTION)
    patched_graphs, patched_diff = _compiled_graphs(patched, shapes)
    # Recompilations = graphs - 1 for both; the stock model's include its batch-1 specialisation.
    assert patched_graphs <= stock_graphs + 1, (patched_graphs, stock_graphs)
    assert patched_diff <= 1e-5
    assert stock_diff <= 1e-5


@pytest.mark.slow
def test_inductor_compiled_patched_model_equals_eager(minilm_path):
    patched = apply_power_bert(_classifier(minilm_path), RETENTION)
    torch._dynamo.reset()
    compiled = torch.compile(patched)
    with torch.no_grad():
        for i, (batch, seq_len) in enumerate([(2, 20), (3, 70)]):
            inputs = _batch(patched, batch, seq_len, padding="left" if i else "right", seed=i)
            torch.testing.assert_close(compiled(**inputs).logits, patched(**inputs).logits, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------------
# torch.export


def test_exported_program_equals_eager_on_unseen_shapes(minilm_path):
    patched = apply_power_bert(_classifier(minilm_path), RETENTION)
    program = export_program(patched)
    run = program.module()
    with torch.no_grad():
        for i, (batch, seq_len, padding) in enumerate([(1, 9, "right"), (5, 100, "right"), (3, 33, "left")]):
            inputs = _batch(patched, batch, seq_len, padding=padding, seed=10 + i)
            (logits,) = run(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
            torch.testing.assert_close(logits, patched(**inputs).logits, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# ONNX


@pytest.fixture(scope="module")
def onnx_encoder(minilm_path, tmp_path_factory):
    encoder = apply_power_bert(AutoModel.from_pretrained(minilm_path, attn_implementation="sdpa").eval(), RETENTION)
    path = export_onnx(encoder, tmp_path_factory.mktemp("onnx") / "encoder.onnx")
    return encoder, path


def test_onnx_encoder_has_only_standard_operators_and_dynamic_axes(onnx_encoder):
    import onnx

    _, path = onnx_encoder
    proto = onnx.load(str(path))
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert not proto.functions
    ops = {node.op_type for node in proto.graph.node}
    assert {"MatMul", "Softmax", "TopK"} <= ops
    inputs = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert inputs == {name: ["batch", "sequence"] for name in ("input_ids", "attention_mask", "token_type_ids")}
    assert [o.name for o in proto.graph.output] == ["last_hidden_state", "kept_indices"]


def test_onnx_runtime_equals_pytorch_on_five_shapes(onnx_encoder):
    import onnxruntime as ort

    encoder, path = onnx_encoder
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    shapes = [(1, 9, "right"), (4, 30, "right"), (3, 45, "left"), (8, 128, "right"), (2, 70, "left")]
    for i, (batch, seq_len, padding) in enumerate(shapes):
        inputs = _batch(encoder, batch, seq_len, padding=padding, seed=20 + i)
        hidden, kept = session.run(None, {name: t.numpy() for name, t in inputs.items()})
        with torch.no_grad():
            out = encoder(**inputs)
        assert torch.equal(torch.from_numpy(kept), out.kept_indices), (batch, seq_len, padding)
        torch.testing.assert_close(torch.from_numpy(hidden), out.last_hidden_state, atol=1e-4, rtol=0)


def test_verify_onnx_refuses_a_file_of_another_model(onnx_encoder, minilm_path):
    encoder, path = onnx_encoder
    other = apply_power_bert(AutoModel.from_pretrained(minilm_path, attn_implementation="sdpa").eval(), RETENTION)
    with torch.no_grad():
        other.encoder.layer[0].output.dense.weight.mul_(1.5)
    assert verify_onnx(path, encoder) <= 1e-4
    with pytest.raises(ExportError, match="differ"):
        verify_onnx(path, other)


def test_cli_export_writes_a_classifier_onnx_runtime_runs(minilm_path, tmp_path, capsys):
    import onnxruntime as ort

    model = apply_power_bert(_classifier(minilm_path), RETENTION)
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "m.onnx")]) == 0
    assert "logits" in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    inputs = _batch(model, 3, 50, padding="left", seed=5)
    (logits,) = session.run(None, {name: t.numpy() for name, t in inputs.items()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(**inputs).logits, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing half-written.


def test_export_refuses_fraction_retention(tmp_path):
    model = apply_power_bert(_tiny_bert(), [0.5, 0.25])
    with pytest.raises(ExportError, match="fractions"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="fractions"):
        export_program(model)
    assert not list(tmp_path.iterdir())


def test_export_refuses_soft_extracts_and_unpatched_models(tmp_path):
    model = _tiny_bert()
    with pytest.raises(ValueError, match="not patched"):
        export_onnx(model, tmp_path / "m.onnx")
    apply_power_bert(model, extracts=[SoftExtract(64) for _ in range(2)])
    with pytest.raises(ExportError, match="hard extract"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_export_onnx_names_the_extra_when_onnxruntime_is_missing(tmp_path, monkeypatch):
    model = apply_power_bert(_tiny_bert(), [8, 4])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"onnxruntime.*powerbert-kernels\[onnx\]"):
        export_onnx(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("failing_step", ["write", "verify"])
def test_failed_export_leaves_no_file(tmp_path, monkeypatch, failing_step):
    import powerbert_kernels.export as export_module

    def write(model, path, opset):
        path.write_bytes(b"half")
        if failing_step == "write":
            raise ExportError("the graph failed to translate")

    def verify(path, model, inputs=None, *, atol):
        raise ExportError("ONNX Runtime differs")

    monkeypatch.setattr(export_module, "_write_onnx", write)
    monkeypatch.setattr(export_module, "verify_onnx", verify)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError):
        export_onnx(apply_power_bert(_tiny_bert(), [8, 4]), target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_cli_export_errors_exit_2_without_traceback(tmp_path, capsys):
    model = _tiny_bert()
    model.save_pretrained(tmp_path / "stock")
    capsys.readouterr()
    assert main(["export", "--model", str(tmp_path / "stock"), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("powerbert export: error: --model") and "--retention" in err
    args = ["export", "--model", str(tmp_path / "stock"), "--output", str(tmp_path / "m.onnx")]
    assert main([*args, "--retention", "0.5,0.25"]) == 2
    assert "fractions" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# ----------------------------------------------------------------------------------------------------
# powerbert bench under other runtimes


@pytest.mark.slow
def test_bench_onnxruntime_reports_both_ratios(capsys):
    args = ["bench", "--config", "minilm", "--batch", "2", "--seq-len", "16", "--repeats", "1", "--warmup", "0"]
    assert main([*args, "--runtime", "onnxruntime", "--threads", "1", "--no-memory", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime"] == "onnxruntime" and report["threads"] == 1
    assert all(isinstance(r, int) for r in report["retention"])
    for key in ("baseline_ms", "power_ms", "eager_baseline_ms", "speedup_vs_eager_sdpa", "flop_ratio", "onnxruntime"):
        assert key in report
    assert report["speedup"] == pytest.approx(report["baseline_ms"] / report["power_ms"])


def test_bench_refuses_bad_threads(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--config", "minilm", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads" in capsys.readouterr().err
