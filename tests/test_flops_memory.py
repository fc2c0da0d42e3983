"""Performance regression tests that noise cannot fool: FLOP counts and peak-memory bounds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel, BertConfig, BertForSequenceClassification

from powerbert_kernels import apply_power_bert, flop_ratio, model_flops
from powerbert_kernels.benchmarking import peak_memory_mb, random_inputs


def counted_flops(model, inputs) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "batch,seq_len,retention",
    [
        (2, 17, [15, 11, 8, 8, 3, 1]),
        (3, 40, [0.9, 0.7, 0.5, 0.3, 0.2, 0.1]),
        (1, 9, [64, 64, 9, 5, 5, 2]),  # counts above the padded length keep everything
    ],
)
def test_flops_match_flop_counter_on_real_minilm(minilm_path, batch, seq_len, retention):
    # Eager attention so that FlopCounterMode sees the stock model's attention matmuls.
    stock = AutoModel.from_pretrained(minilm_path, attn_implementation="eager").eval()
    inputs = random_inputs(batch, seq_len, stock.config.vocab_size, torch.device("cpu"))
    assert counted_flops(stock, inputs) == model_flops(stock, batch, seq_len)
    patched = apply_power_bert(copy.deepcopy(stock), retention)
    assert counted_flops(patched, inputs) == model_flops(patched, batch, seq_len, retention)


def test_flops_of_a_classifier_and_the_bert_base_paper_configuration():
    config = BertConfig(num_labels=3, attn_implementation="eager")
    model = BertForSequenceClassification(config).eval()
    retention = [76, 62, 55, 52, 42, 40, 36, 24, 17, 13, 11, 3]
    inputs = random_inputs(2, 128, config.vocab_size, torch.device("cpu"))
    assert counted_flops(model, inputs) == model_flops(model, 2, 128)
    apply_power_bert(model, retention)
    assert counted_flops(model, inputs) == model_flops(model, 2, 128, retention)
    # Hand count of one layer (D=768, 4D FFN) on 128 -> 76 vectors, as a check of the formula itself.
    D, n, kept = 768, 128, 76
    layer = 2 * n * D * 4 * D + 4 * n * n * D + 2 * kept * D * 8 * D
    stock_layer = 2 * n * D * 4 * D + 4 * n * n * D + 2 * n * D * 8 * D
    assert model_flops(model, 1, 128, [kept] + [1] * 11) - model_flops(model, 1, 128, [kept, 1] + [1] * 10) == 0
    assert stock_layer - layer == 2 * (n - kept) * D * 8 * D
    assert 3.2 < flop_ratio(model, 2, 128, retention) < 3.4


def test_peak_memory_not_above_stock(minilm_path):
    # Allocation sizes are deterministic, so this bound is exact, not a timing: the patched forward at
    # full retention must not hold more than the stock SDPA forward, and pruning must lower it.
    stock = AutoModel.from_pretrained(minilm_path, attn_implementation="sdpa").eval()
    inputs = random_inputs(4, 256, stock.config.vocab_size, torch.device("cpu"))
    full = apply_power_bert(copy.deepcopy(stock), [256] * 6)
    pruned = apply_power_bert(copy.deepcopy(stock), [0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    cpu = torch.device("cpu")
    with torch.inference_mode():
        base = peak_memory_mb(lambda: stock(**inputs), cpu)
        if base is None:
            pytest.skip("this PyTorch build's profiler reports no allocation events")
        assert peak_memory_mb(lambda: full(**inputs), cpu) <= 1.05 * base
        assert peak_memory_mb(lambda: pruned(**inputs), cpu) <= base
