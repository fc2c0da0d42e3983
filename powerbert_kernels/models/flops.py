"""Theoretical forward FLOPs of a stock and a PoWER-BERT model.

Counts what ``torch.utils.flop_counter.FlopCounterMode`` counts: 2 FLOPs per multiply-add of every
matrix product (the linear layers and the two products of attention), nothing for embeddings, softmax,
LayerNorm or activations. Layer j's attention block (Q/K/V, attention, output projection) runs on the
vectors it receives, its feed-forward block on the ones it keeps.
"""

from __future__ import annotations

from torch import nn

from .architectures import adapter_for
from .retention import Retention, keep_counts, validate_retention


def model_flops(model: nn.Module, batch: int, seq_len: int, retention: Retention | None = None) -> int:
    """Forward FLOPs of ``model`` on ``batch`` sequences padded to ``seq_len``.

    Args:
        model: a model :func:`~powerbert_kernels.apply_power_bert` accepts (patched or not).
        batch: number of sequences (for multiple choice: examples x choices).
        seq_len: padded length N.
        retention: the configuration to count, or ``None`` for the stock model (every vector kept).
    """
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be at least 1, got {batch} and {seq_len}")
    adapter = adapter_for(model)
    base = adapter.base_model(model)
    dims = adapter.dims(model.config)
    D, H, ffn, L = dims["hidden"], dims["heads"], dims["ffn_weights"], dims["layers"]
    A = H * (D // H)
    if retention is None:
        keeps = [seq_len] * L
    else:
        retention = validate_retention(retention, L, model.config.max_position_embeddings)
        keeps = keep_counts(retention, seq_len)
    total, received = 0, seq_len
    for kept in keeps:
        rows = batch * received
        total += 2 * rows * D * 3 * A  # Q, K, V projections
        total += 4 * batch * received * received * A  # Q K^T and P V
        total += 2 * rows * A * D  # attention output projection
        total += 2 * (batch * kept) * ffn  # feed-forward, on the kept vectors only
        received = kept
    total += adapter.encoder_extra_flops(base, batch, seq_len)
    total += _cls_linear_flops(model, base, batch)
    return total


def _cls_linear_flops(model: nn.Module, base: nn.Module, batch: int) -> int:
    # The pooler and the task head each apply their linear layers once per sequence (to the CLS vector).
    encoder_ids = {id(m) for m in base.modules()}
    pooler = getattr(base, "pooler", None)
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            in_head = id(module) not in encoder_ids
            in_pooler = pooler is not None and any(module is m for m in pooler.modules())
            if in_head or in_pooler:
                total += 2 * batch * module.in_features * module.out_features
    return total


def flop_ratio(model: nn.Module, batch: int, seq_len: int, retention: Retention) -> float:
    """Stock FLOPs over PoWER-BERT FLOPs at this shape: the ideal speed-up."""
    return model_flops(model, batch, seq_len) / model_flops(model, batch, seq_len, retention)
