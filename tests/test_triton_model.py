"""The real pretrained MiniLM, patched, gives the same result with the Triton kernels as with the reference."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from powerbert_kernels import apply_power_bert
from powerbert_kernels.ops import _dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SENTENCES = ["Kernels keep the most significant word vectors.", "Hi there"]
RETENTION = [0.8, 0.7, 0.6, 0.5, 0.4, 0.3]


@pytest.fixture(scope="module")
def patched_minilm(minilm_path):
    model = AutoModel.from_pretrained(minilm_path).eval().to(DEVICE)
    return apply_power_bert(model, retention=RETENTION)


@pytest.mark.parametrize("side", ["right", "left"])
def test_triton_backend_matches_torch_backend(monkeypatch, patched_minilm, minilm_tokenizer, side):
    minilm_tokenizer.padding_side = side
    try:
        batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt").to(DEVICE)
    finally:
        minilm_tokenizer.padding_side = "right"
    used = []
    implementation = _dispatch.implementation

    def recording(op, name):
        used.append((op, name))
        return implementation(op, name)

    monkeypatch.setattr(_dispatch, "implementation", recording)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("POWERBERT_BACKEND", backend)
        with torch.no_grad():
            results[backend] = patched_minilm(**batch)
    assert {("attention_with_significance", "triton"), ("select_gather", "triton")} <= set(used)
    want, got = results["torch"], results["triton"]
    for layer, (a, b) in enumerate(zip(got.layer_kept_indices, want.layer_kept_indices, strict=True)):
        assert torch.equal(a, b), f"layer {layer} kept different tokens"
    assert torch.equal(got.kept_attention_mask, want.kept_attention_mask)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=1e-4, atol=1e-4)
