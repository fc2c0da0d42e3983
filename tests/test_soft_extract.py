"""Soft extract: exactness at r = 1, the rank rule, gradients, clipping, the penalty and the derived configuration."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from powerbert_kernels import apply_power_bert, remove_power_bert
from powerbert_kernels.models import validate_retention
from powerbert_kernels.models.soft_extract import (
    SoftExtract,
    clip_retention_,
    derive_retention,
    retention_masses,
    retention_penalty,
    soft_extracts,
)
from powerbert_kernels.ops import selection_order

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Short one.",
    "Attention is computed on all vectors a layer receives.",
]


def tiny_bert(layers: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def tiny_batch(batch: int = 4, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 50, (batch, length), generator=g)
    input_ids[:, 0] = 2
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(1, batch):  # rows of different lengths: padding ranks last and must not matter
        mask[b, length - 3 * b :] = 0
    return {"input_ids": input_ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])[:batch]}


def soft_patch(model, max_length: int):
    return apply_power_bert(model, extracts=[SoftExtract(max_length) for _ in range(model.config.num_hidden_layers)])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_all_ones_equals_unpatched_tiny(attn):
    stock = tiny_bert().eval()
    stock.config._attn_implementation = attn
    soft = soft_patch(copy.deepcopy(stock), 32)
    batch = tiny_batch()
    with torch.no_grad():
        want = stock(**batch)
        got = soft(**batch)
    assert torch.allclose(got.logits, want.logits, atol=1e-6, rtol=1e-5)
    assert (got.loss - want.loss).abs() <= 1e-6


def test_all_ones_equals_unpatched_minilm(minilm_path, minilm_tokenizer):
    stock = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    soft = soft_patch(copy.deepcopy(stock), 64)
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = stock.bert(**batch).last_hidden_state
        got = soft.bert(**batch).last_hidden_state
        want_logits, got_logits = stock(**batch).logits, soft(**batch).logits
    real = batch["attention_mask"].bool()
    assert (got - want)[real].abs().max() <= 1e-5
    assert (got_logits - want_logits).abs().max() <= 1e-5


def test_scales_the_kth_ranked_vector_by_r_k():
    extract = SoftExtract(8)
    with torch.no_grad():
        extract.r.copy_(torch.linspace(1.0, 0.3, 8))
    hidden = torch.randn(2, 6, 5)
    significance = torch.tensor([[0.1, 3.0, 0.5, 2.0, 2.0, 0.0], [5.0, 1.0, 4.0, 0.2, 9.0, 9.0]])
    mask = torch.tensor([[True] * 5 + [False], [True] * 4 + [False, False]])
    out, out_mask, indices = extract(hidden, significance, mask, 6)
    assert indices is None and torch.equal(out_mask, mask)
    # Row 0: CLS (pos 0), then 1 (3.0), 3 and 4 (2.0, tie to the lower position), 2 (0.5), padding 5.
    # Row 1: CLS, then 2 (4.0), 1 (1.0), 3 (0.2), then the padding 4 and 5 in position order.
    ranks = torch.tensor([[0, 1, 4, 2, 3, 5], [0, 2, 1, 3, 4, 5]])
    order = selection_order(significance, mask)
    assert torch.equal(torch.argsort(order, dim=1), ranks)
    expected = hidden * extract.r.detach()[ranks].unsqueeze(-1)
    assert torch.equal(out, expected)


def test_rejects_longer_input_than_r():
    extract = SoftExtract(4)
    with pytest.raises(ValueError, match="max_length=4"):
        extract(torch.zeros(1, 5, 3), torch.zeros(1, 5), torch.ones(1, 5, dtype=torch.bool), 5)
    with pytest.raises(ValueError, match="max_length"):
        SoftExtract(0)


def test_gradients_reach_r_and_the_model():
    model = soft_patch(tiny_bert(), 32).train()
    batch = tiny_batch()
    extracts = soft_extracts(model)
    lam = 1e-3
    loss = model(**batch).loss + lam * retention_penalty(extracts)
    loss.backward()
    longest = int(batch["attention_mask"].sum(1).max())
    for j, e in enumerate(extracts, start=1):
        assert e.r.grad is not None
        # Ranks held by a real token in some row get task gradient on top of the penalty's lambda * j.
        assert (e.r.grad[:longest] - lam * j).abs().max() > 0
        # Ranks beyond every row's real tokens are padding (or absent): only the penalty reaches them.
        assert torch.allclose(e.r.grad[longest:], torch.full_like(e.r.grad[longest:], lam * j))
    for name in (
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.2.output.dense.weight",
        "classifier.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_penalty_weights_layers_by_their_1_based_index():
    extracts = [SoftExtract(5) for _ in range(3)]
    with torch.no_grad():
        extracts[0].r.fill_(1.0)
        extracts[1].r.fill_(0.5)
        extracts[2].r.zero_()
    assert retention_penalty(extracts).item() == pytest.approx(1 * 5 + 2 * 2.5 + 0)
    assert retention_masses(extracts) == pytest.approx([5.0, 2.5, 0.0])
    with pytest.raises(ValueError, match="SoftExtract"):
        retention_penalty([])


def test_clip_keeps_r_in_unit_interval_after_optimizer_steps():
    model = soft_patch(tiny_bert(), 32).train()
    extracts = soft_extracts(model)
    optimizer = torch.optim.Adam([e.r for e in extracts], lr=0.4)
    batch = tiny_batch()
    for _ in range(6):
        # A negative penalty weight for half the ranks pushes them up, the rest down: both bounds bind.
        push = torch.cat([torch.ones(16), -torch.ones(16)])
        loss = model(**batch).loss + sum((push * e.r).sum() for e in extracts)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert any((e.r < 0).any() or (e.r > 1).any() for e in extracts)
        clip_retention_(extracts)
        for e in extracts:
            assert e.r.min() >= 0 and e.r.max() <= 1
    assert all((e.r[:16] == 0).all() and (e.r[16:] == 1).all() for e in extracts)


def test_derive_retention_floor_nonincreasing_bounds():
    assert derive_retention([10.7, 12.2, 5.5, 0.3], 16) == [10, 10, 5, 1]
    assert derive_retention([40.0, 3.9999999, 0.0], 32) == [32, 4, 1]
    assert derive_retention([0.0, 0.0], 8) == [1, 1]
    got = derive_retention([63.99999, 63.2, 17.0, 16.9], 64, max_positions=512)
    assert got == [64, 63, 17, 16]
    assert validate_retention(got, 4, 512) == got
    with pytest.raises(ValueError, match="masses\\[1\\]"):
        derive_retention([3.0, float("nan")], 8)
    with pytest.raises(ValueError, match="masses\\[0\\]"):
        derive_retention([-1.0], 8)
    with pytest.raises(ValueError, match="max_length"):
        derive_retention([3.0], 0)


def test_soft_patch_removes_cleanly_and_round_trips(tmp_path):
    model = soft_patch(tiny_bert(), 32)
    assert len(soft_extracts(model)) == 3
    remove_power_bert(model)
    assert soft_extracts(model) == []
    assert not any("power_extract" in name for name in model.state_dict())
    model.save_pretrained(tmp_path)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path)
    assert not any("power_extract" in name for name in reloaded.state_dict())
