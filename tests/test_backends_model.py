"""The real pretrained MiniLM, patched, gives the same result with every accelerated backend as with the
reference, and keeps the same tokens in every layer."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModel

from powerbert_kernels import apply_power_bert, ext, ops
from powerbert_kernels.ops import dispatch

CUDA = torch.cuda.is_available()
SENTENCES = [
    "Kernels keep the most significant word vectors.",
    "Hi there",
    "PoWER-BERT removes word vectors layer by layer, so later layers run on fewer of them.",
    "A",
]
RETENTION = [0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
# Triton runs compiled on a GPU, else under its CPU interpreter; the extension on the CPU and, when
# built with CUDA kernels, on the GPU.
CASES = [("triton", "cuda" if CUDA else "cpu"), ("ext", "cpu")] + ([("ext", "cuda")] if CUDA else [])


def require(backend: str) -> None:
    if backend in ops.available_backends():
        return
    reason = ops.missing_reason(backend)
    if backend == "ext" and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: the compiled extension must be built and load: {ext.LOAD_ERROR}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return AutoModel.from_pretrained(minilm_path).eval()


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_backend_matches_torch_backend(monkeypatch, minilm, minilm_tokenizer, backend, device, side, exclude_self):
    require(backend)
    model = apply_power_bert(minilm, retention=RETENTION, exclude_self=exclude_self).to(device)
    minilm_tokenizer.padding_side = side
    try:
        batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt").to(device)
    finally:
        minilm_tokenizer.padding_side = "right"
    used = []
    implementation = dispatch.implementation

    def recording(op, name):
        used.append((op, name))
        return implementation(op, name)

    monkeypatch.setattr(dispatch, "implementation", recording)
    results = {}
    for name in ("torch", backend):
        monkeypatch.setenv("POWERBERT_BACKEND", name)
        with torch.no_grad():
            results[name] = model(**batch)
    assert {("attention_with_significance", backend), ("select_gather", backend)} <= set(used)
    want, got = results["torch"], results[backend]
    for layer, (a, b) in enumerate(zip(got.layer_kept_indices, want.layer_kept_indices, strict=True)):
        assert torch.equal(a, b), f"layer {layer} kept different tokens"
    assert torch.equal(got.kept_attention_mask, want.kept_attention_mask)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=1e-4, atol=1e-4)
