"""Other BERT-family architectures through their adapters: exact at full retention, FLOPs counted right."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForMultipleChoice,
    RobertaForSequenceClassification,
)

from powerbert_kernels import apply_power_bert, model_flops

SMALL = dict(
    hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64
)


def roberta():
    return RobertaForSequenceClassification(RobertaConfig(**SMALL, num_labels=3, attn_implementation="eager"))


def electra():
    # embedding_size below hidden_size: the model projects its embeddings.
    return ElectraForSequenceClassification(
        ElectraConfig(**SMALL, embedding_size=32, num_labels=2, attn_implementation="eager")
    )


def batch_for(config, side: str, B: int = 3, N: int = 19):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (B, N), generator=g)
    lengths = torch.tensor([N, 7, 2])
    pos = torch.arange(N)[None]
    mask = (pos < lengths[:, None]) if side == "right" else (pos >= (N - lengths)[:, None])
    ids = ids.masked_fill(~mask, config.pad_token_id)
    ids[torch.arange(B), (N - lengths) if side == "left" else 0] = 0  # <s> / [CLS]
    return {"input_ids": ids, "attention_mask": mask.long()}


@pytest.mark.parametrize("make", [roberta, electra])
@pytest.mark.parametrize("side", ["right", "left"])
def test_full_retention_equals_stock(make, side):
    torch.manual_seed(0)
    model = make().eval()
    inputs = batch_for(model.config, side)
    patched = apply_power_bert(copy.deepcopy(model), [1.0, 1.0, 1.0])
    with torch.no_grad():
        want, got = model(**inputs), patched(**inputs)
    assert (got.logits - want.logits).abs().max() <= 1e-5


@pytest.mark.parametrize("make", [roberta, electra])
def test_pruned_flops_match_flop_counter(make):
    torch.manual_seed(0)
    model = make().eval()
    inputs = batch_for(model.config, "right")
    retention = [12, 6, 2]
    with torch.no_grad(), FlopCounterMode(display=False) as stock:
        model(**inputs)
    assert stock.get_total_flops() == model_flops(model, 3, 19)
    apply_power_bert(model, retention)
    with torch.no_grad(), FlopCounterMode(display=False) as pruned:
        out = model(**inputs)
    assert pruned.get_total_flops() == model_flops(model, 3, 19, retention)
    assert out.kept_indices.shape == (3, 2) and (out.kept_indices[:, 0] == 0).all()


def test_roberta_multiple_choice():
    torch.manual_seed(0)
    model = RobertaForMultipleChoice(RobertaConfig(**SMALL)).eval()
    inputs = {k: v[None].repeat(2, 1, 1) for k, v in batch_for(model.config, "right").items()}
    patched = apply_power_bert(copy.deepcopy(model), [19, 19, 19])
    with torch.no_grad():
        torch.testing.assert_close(patched(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)
