"""The patched model on the real pretrained MiniLM and on a random bert-base."""

from __future__ import annotations

import copy

import pytest
import torch
from tolerance import assert_close_to_reference
from transformers import (
    AutoModel,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions, SequenceClassifierOutput

from powerbert_kernels import apply_power_bert, is_patched, remove_power_bert
from powerbert_kernels.models import row_keep_counts

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Short one.",
    "Attention is computed on all vectors a layer receives, the feed-forward block only on kept ones.",
    "Hi",
]


def encode(tokenizer, side: str, sentences=SENTENCES):
    tokenizer.padding_side = side
    try:
        return tokenizer(sentences, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def minilm(request, minilm_path):
    return AutoModel.from_pretrained(minilm_path, attn_implementation=request.param).eval()


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_full_retention_equals_stock_minilm(minilm, minilm_tokenizer, side, backend, monkeypatch):
    """Keeping everything reproduces the stock model. On the torch backend the layers run the stock
    modules' composition (within 1e-5); with the fused kernels (ext on the CPU: attention and the dense
    layers with their epilogues), the float32 output is as close to the float64 stock model as twice the
    stock float32 model's own error (the kernels' rule, over the whole model)."""
    monkeypatch.setenv("POWERBERT_BACKEND", backend)
    batch = encode(minilm_tokenizer, side)
    N = batch["input_ids"].shape[1]
    patched = apply_power_bert(copy.deepcopy(minilm), [N] * 6)
    with torch.no_grad():
        want = minilm(**batch)
        got = patched(**batch)
        want64 = copy.deepcopy(minilm).double()(**batch)
    assert isinstance(got, BaseModelOutputWithPoolingAndCrossAttentions)
    real = batch["attention_mask"].bool()
    if backend == "torch":
        assert (got.last_hidden_state - want.last_hidden_state).abs().max() <= 1e-5
        assert (got.pooler_output - want.pooler_output).abs().max() <= 1e-5
    else:
        assert_close_to_reference(
            "last_hidden_state",
            got.last_hidden_state[real],
            want64.last_hidden_state[real],
            want.last_hidden_state[real],
            torch.float32,
        )
        assert_close_to_reference(
            "pooler_output", got.pooler_output, want64.pooler_output, want.pooler_output, torch.float32
        )
    assert torch.equal(got.kept_indices, torch.arange(N).expand(len(SENTENCES), N))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("side", ["right", "left", "none"])
def test_full_retention_equals_stock_random_bert_base(attn, side):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=3, attn_implementation=attn)).eval()
    B, N = 3, 21
    input_ids = torch.randint(1000, 30000, (B, N))
    lengths = torch.tensor([N, N, N] if side == "none" else [N, 9, 1])
    pos = torch.arange(N)[None]
    mask = (pos < lengths[:, None]) if side == "right" else (pos >= (N - lengths)[:, None])
    patched = apply_power_bert(copy.deepcopy(model), [1.0] * 12)
    with torch.no_grad():
        want = model(input_ids=input_ids, attention_mask=mask.long(), output_hidden_states=True)
        got = patched(input_ids=input_ids, attention_mask=mask.long(), output_hidden_states=True)
    assert isinstance(got, SequenceClassifierOutput)
    assert (got.logits - want.logits).abs().max() <= 1e-5
    for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert torch.equal(got.kept_indices, torch.arange(N).expand(B, N))


def test_count_above_padded_length_keeps_everything(minilm_path, minilm_tokenizer):
    model = AutoModel.from_pretrained(minilm_path).eval()
    batch = encode(minilm_tokenizer, "right", SENTENCES[1:2])  # a short batch: dynamic padding
    N = batch["input_ids"].shape[1]
    patched = apply_power_bert(copy.deepcopy(model), [N + 50, N + 40, N + 3, N, N, 2])
    with torch.no_grad():
        want, got = model(**batch), patched(**batch)
    assert got.kept_indices.shape == (1, 2)
    assert [t.shape[1] for t in got.layer_kept_indices] == [N, N, N, N, N, 2]
    torch.testing.assert_close(got.last_hidden_state[:, 0], want.last_hidden_state[:, 0], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def patched_minilm(minilm_path):
    model = AutoModel.from_pretrained(minilm_path).eval()
    return apply_power_bert(model, [0.8, 0.6, 0.5, 0.4, 0.3, 0.2])


def test_rows_are_independent_of_their_batch(patched_minilm, minilm_tokenizer):
    batch = encode(minilm_tokenizer, "right")
    with torch.no_grad():
        together = patched_minilm(**batch)
        for b in range(len(SENTENCES)):
            alone = patched_minilm(**{k: v[b : b + 1] for k, v in batch.items()})
            # The batch output is as wide as its largest count: compare the row's real kept vectors.
            mine, theirs = alone.kept_attention_mask[0], together.kept_attention_mask[b]
            assert torch.equal(alone.kept_indices[0][mine], together.kept_indices[b][theirs])
            torch.testing.assert_close(
                alone.last_hidden_state[0][mine], together.last_hidden_state[b][theirs], atol=2e-5, rtol=1e-5
            )
            torch.testing.assert_close(alone.pooler_output[0], together.pooler_output[b], atol=2e-5, rtol=1e-5)


def test_left_padding_keeps_only_real_tokens(patched_minilm, minilm_tokenizer):
    right, left = encode(minilm_tokenizer, "right"), encode(minilm_tokenizer, "left")
    N = left["input_ids"].shape[1]
    lengths = left["attention_mask"].sum(dim=1)
    with torch.no_grad():
        out_left = patched_minilm(**left)
        out_right = patched_minilm(**right)
    counts = row_keep_counts([0.8, 0.6, 0.5, 0.4, 0.3, 0.2], lengths.tolist())
    for layer, kept in enumerate(out_left.layer_kept_indices):
        kept_real = left["attention_mask"].gather(1, kept).bool() & out_left.layer_kept_attention_mask[layer]
        for b in range(len(SENTENCES)):
            # Each row keeps its own count of real tokens (a fraction of its length), real ones first.
            n = counts[b][layer]
            assert kept_real[b, :n].all(), f"layer {layer + 1}, row {b}: padding kept over a real token"
            assert kept_real[b].sum() == n, f"layer {layer + 1}, row {b}: kept {kept_real[b].sum()} real, want {n}"
    # The same sentence keeps the same tokens whichever side it is padded on (shifted by the padding).
    offset = (N - lengths)[:, None]
    full = lengths == lengths.max()
    assert torch.equal(out_left.kept_indices[full] - offset[full], out_right.kept_indices[full])
    assert (out_left.kept_indices[:, 0] == N - lengths).all(), "the CLS vector must be kept in slot 0"
    assert out_left.kept_attention_mask[:, 0].all()


def test_cls_only_row_and_batch_of_one(patched_minilm, minilm_tokenizer):
    batch = encode(minilm_tokenizer, "right", ["one two three four five six seven eight", "x"])
    batch["attention_mask"][1] = 0
    batch["attention_mask"][1, 0] = 1  # only CLS is real
    with torch.no_grad():
        out = patched_minilm(**batch)
        single = patched_minilm(**{k: v[:1] for k, v in batch.items()})
    assert torch.isfinite(out.last_hidden_state).all()
    assert out.kept_indices[1, 0] == 0 and out.kept_attention_mask[1].sum() == 1
    assert single.last_hidden_state.shape[0] == 1
    torch.testing.assert_close(single.last_hidden_state[0], out.last_hidden_state[0], atol=2e-5, rtol=1e-5)


def test_heads_carry_kept_indices_and_round_trip_through_save(tmp_path, minilm_path, minilm_tokenizer):
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    retention = [40, 30, 20, 12, 8, 4]
    apply_power_bert(model, retention, exclude_self=True)
    batch = encode(minilm_tokenizer, "right")
    with torch.no_grad():
        out = model(**batch)
    assert out.kept_indices.shape == (len(SENTENCES), 4)
    model.save_pretrained(tmp_path)
    loaded = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert not is_patched(loaded)
    apply_power_bert(loaded)
    assert loaded.config.power_bert_retention == retention and loaded.config.power_bert_exclude_self
    with torch.no_grad():
        again = loaded(**batch)
    torch.testing.assert_close(again.logits, out.logits)
    assert torch.equal(again.kept_indices, out.kept_indices)
    remove_power_bert(loaded)
    assert not is_patched(loaded)
    with torch.no_grad():
        stock = loaded(**batch)
    assert not hasattr(stock, "kept_indices") or stock.kept_indices is None


def test_tuple_output_and_repatching(minilm_path, minilm_tokenizer):
    model = AutoModel.from_pretrained(minilm_path).eval()
    apply_power_bert(model, [10, 8, 6, 5, 4, 3])
    apply_power_bert(model, [9, 7, 5, 4, 3, 2])
    batch = encode(minilm_tokenizer, "right")
    with torch.no_grad():
        out = model(**batch, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape[1] == 2


@pytest.mark.parametrize(
    "retention, error, match",
    [
        ([4] * 5, ValueError, r"one entry per encoder layer \(6\), got 5"),
        ([4, 5, 3, 3, 2, 1], ValueError, "non-increasing"),
        ([4, 3, 3, 2, 1, 0], ValueError, r"retention\[5\] = 0: each count must be between 1"),
        ([600, 3, 3, 2, 1, 1], ValueError, r"maximum positions \(512\)"),
        ([1.2, 0.5, 0.4, 0.3, 0.2, 0.1], ValueError, r"fraction must be in \(0, 1\]"),
        ([0.5, 0.5, 0.4, 0.3, 0.2, 0.0], ValueError, r"fraction must be in \(0, 1\]"),
        ([0.5, 3, 3, 2, 1, 1], TypeError, "not a mix"),
        ("1,2,3", TypeError, "retention must be a sequence"),
    ],
)
def test_bad_retention_is_refused(minilm_path, retention, error, match):
    model = AutoModel.from_pretrained(minilm_path)
    with pytest.raises(error, match=match):
        apply_power_bert(model, retention)
    assert not is_patched(model)


def test_missing_retention_and_bad_masks_are_refused(patched_minilm, minilm_path, minilm_tokenizer):
    with pytest.raises(ValueError, match="retention: none given"):
        apply_power_bert(AutoModel.from_pretrained(minilm_path))
    batch = encode(minilm_tokenizer, "right")
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, seq_len\)"):
        patched_minilm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"][:, :-1])
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, seq_len\)"):
        patched_minilm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"][:, None, None, :])
    empty = batch["attention_mask"].clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="every row needs at least one real token"):
        patched_minilm(input_ids=batch["input_ids"], attention_mask=empty)
    with pytest.raises(ValueError, match="output_attentions is not supported"):
        patched_minilm(**batch, output_attentions=True)


@pytest.mark.parametrize("cls", [BertForMaskedLM, BertForTokenClassification])
def test_heads_that_read_every_token_are_refused(cls):
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    with pytest.raises(TypeError, match=f"model: {cls.__name__} is not supported"):
        apply_power_bert(cls(config), [4, 2])


def test_unsupported_model_types_are_refused():
    from transformers import GPT2Config, GPT2Model

    with pytest.raises(TypeError, match="unsupported model type 'gpt2'"):
        apply_power_bert(GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2)), [4])
    with pytest.raises(ValueError, match="position_embedding_type"):
        config = BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            position_embedding_type="relative_key",
        )
        apply_power_bert(BertModel(config), [4])


def test_compiles_into_one_graph():
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100, num_labels=2
    )
    model = apply_power_bert(BertForSequenceClassification(config).eval(), [6, 3])
    ids = torch.randint(0, 100, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    torch._dynamo.reset()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask)
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(got.logits, want.logits)
    assert torch.equal(got.kept_indices, want.kept_indices)
