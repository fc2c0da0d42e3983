"""A patched model trains as the stock model trains: gradient checkpointing and attention dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from powerbert_kernels import apply_power_bert, ops
from powerbert_kernels.models.soft_extract import SoftExtract, soft_extracts
from powerbert_kernels.ops.attention import attention_with_significance_dropout, attention_with_significance_ref

N = 32


def tiny_model(attention_dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=attention_dropout,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (4, N), generator=g)
    mask = torch.ones(4, N, dtype=torch.long)
    mask[1, 20:] = 0
    mask[3, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def enable_checkpointing(model) -> None:
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def saved_bytes_and_grads(model) -> tuple[int, dict[str, torch.Tensor]]:
    """Bytes autograd saves for the backward pass during one forward, and the gradients of a step."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    model.train()
    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch()).loss
    loss.backward()
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("soft", [False, True], ids=["hard-extract", "soft-extract"])
def test_gradient_checkpointing_saves_memory_and_keeps_the_gradients(soft):
    def patched():
        model = tiny_model()
        if soft:
            apply_power_bert(model, extracts=[SoftExtract(N) for _ in range(4)])
            with torch.no_grad():
                for j, e in enumerate(soft_extracts(model)):
                    e.r.copy_(torch.linspace(1.0, 0.1 * j, N))
        else:
            apply_power_bert(model, [24, 16, 8, 2])
        return model

    plain_bytes, plain_grads = saved_bytes_and_grads(patched())
    model = patched()
    enable_checkpointing(model)
    ckpt_bytes, ckpt_grads = saved_bytes_and_grads(model)
    # Only each layer's inputs are kept: a fraction of the activations.
    assert ckpt_bytes < 0.4 * plain_bytes, (ckpt_bytes, plain_bytes)
    assert plain_grads.keys() == ckpt_grads.keys()
    if soft:
        assert any(name.endswith(".r") for name in ckpt_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_attention_dropout_matches_its_definition_and_keeps_the_significance():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 12, 3, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    torch.manual_seed(5)
    out, significance = attention_with_significance_dropout(q, k, v, mask, 8**-0.5, False, 0.3)
    # The definition: softmax of the masked scores, dropped out, times v; significance before dropout.
    torch.manual_seed(5)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * 8**-0.5
    scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(torch.float32).min)
    expected = torch.einsum("bhqk,bkhd->bqhd", F.dropout(scores.softmax(-1), 0.3), v).reshape(2, 12, 24)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(significance, attention_with_significance_ref(q, k, v, mask)[1])
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()

    # Through the public op: dropout on the torch backend; a forced kernel backend refuses it.
    out2, _ = ops.attention_with_significance(q, k, v, mask, dropout_p=0.3, backend="torch")
    assert not torch.allclose(out2, ops.attention_with_significance(q, k, v, mask, backend="torch")[0])
    for backend in ("triton", "ext"):
        with pytest.raises(ValueError, match="dropout_p=0.3: attention dropout"):
            ops.attention_with_significance(q, k, v, mask, dropout_p=0.3, backend=backend)
    with pytest.raises(ValueError, match="dropout_p must be a probability"):
        ops.attention_with_significance(q, k, v, mask, dropout_p=1.0)


def test_patched_model_applies_attention_dropout_in_training_only():
    model = apply_power_bert(tiny_model(attention_dropout=0.3), [24, 16, 8, 2])
    reference = apply_power_bert(tiny_model(attention_dropout=0.0), [24, 16, 8, 2]).eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)
        model.train()
        a, b = model(**inputs).logits, model(**inputs).logits
    assert not torch.allclose(a, b)  # a new dropout mask each call
    # Full-keep layers (plain attention) drop too.
    full = apply_power_bert(tiny_model(attention_dropout=0.3), [N] * 4).train()
    with torch.no_grad():
        assert not torch.allclose(full(**inputs).logits, full(**inputs).logits)


def test_patched_forward_keeps_the_stock_signature():
    # Trainer drops the dataset columns the model's forward does not name; a (*args, **kwargs) forward
    # would leave it only the labels.
    import inspect

    model = tiny_model()
    stock = inspect.signature(model.forward)
    apply_power_bert(model, [24, 16, 8, 2])
    assert inspect.signature(model.forward) == stock
    assert "input_ids" in inspect.signature(model.bert.forward).parameters
