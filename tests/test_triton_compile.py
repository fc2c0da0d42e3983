"""The Triton backend inside torch custom ops: opcheck, and torch.compile of a patched model."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")  # the `triton` extra

from transformers import BertConfig, BertModel

from powerbert_kernels import apply_power_bert, ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_attention_op_passes_opcheck_with_triton():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 9, 2, 16, generator=g).to(DEVICE) for _ in range(3))
    mask = torch.tensor([[True] * 9, [False] * 3 + [True] * 6], device=DEVICE)
    torch.library.opcheck(torch.ops.powerbert.attention_with_significance, (q, k, v, mask, 0.25, True, "triton"))


def test_select_gather_op_passes_opcheck_with_triton():
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 9, 5, generator=g).to(DEVICE)
    sig = torch.rand(2, 9, generator=g).to(DEVICE)
    mask = torch.tensor([[True] * 7 + [False] * 2, [False] * 3 + [True] * 6], device=DEVICE)
    torch.library.opcheck(torch.ops.powerbert.select_gather, (hidden, sig, mask, 4, "triton"))


def test_ops_compile_with_fullgraph(monkeypatch):
    monkeypatch.setenv("POWERBERT_BACKEND", "triton")

    def extract(q, k, v, mask, hidden):
        out, sig = ops.attention_with_significance(q, k, v, mask, exclude_self=True)
        return ops.select_gather(hidden + out, sig, mask, 4)

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 3 * 32, generator=g).to(DEVICE)
    q, k, v = (t.view(2, 9, 2, 16) for t in x.split(32, dim=-1))
    hidden = torch.randn(2, 9, 32, generator=g).to(DEVICE)
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4], device=DEVICE)
    torch._dynamo.reset()
    got = torch.compile(extract, fullgraph=True, backend="aot_eager")(q, k, v, mask, hidden)
    want = extract(q, k, v, mask, hidden)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture
def small_patched_bert():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    model = BertModel(config).eval().to(DEVICE)
    apply_power_bert(model, retention=[6, 3])
    input_ids = torch.randint(0, 64, (2, 10), device=DEVICE)
    attention_mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3], device=DEVICE)
    return model, input_ids, attention_mask


def test_compiled_patched_model_has_no_graph_break(monkeypatch, small_patched_bert):
    monkeypatch.setenv("POWERBERT_BACKEND", "triton")
    model, input_ids, attention_mask = small_patched_bert
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(input_ids=input_ids, attention_mask=attention_mask)
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    calls = [
        (str(n.target), n.args[-1]) for g in explanation.graphs for n in g.graph.nodes if "powerbert" in str(n.target)
    ]
    # Both ops are in the graph, with the backend the dispatcher chose baked in as a constant.
    assert ("powerbert.attention_with_significance", "triton") in calls
    assert ("powerbert.select_gather", "triton") in calls


def test_compiled_patched_model_matches_eager(monkeypatch, small_patched_bert):
    monkeypatch.setenv("POWERBERT_BACKEND", "triton")
    model, input_ids, attention_mask = small_patched_bert
    torch._dynamo.reset()
    with torch.no_grad():
        want = model(input_ids=input_ids, attention_mask=attention_mask)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        got = compiled(input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.kept_indices, want.kept_indices)
