"""Theoretical forward FLOPs of a stock and a PoWER-BERT model.

Counts what ``torch.utils.flop_counter.FlopCounterMode`` counts: 2 FLOPs per multiply-add of every
matrix product (the linear layers and the two products of attention), nothing for embeddings, softmax,
LayerNorm or activations. Layer j's attention block (Q/K/V, attention, output projection) runs on the
vectors it receives, its feed-forward block on the ones it keeps.

With ``lengths`` the count is per row: each row as if run alone at its own real length, which is what a
row costs however it is batched (and, for fractions, exactly the vectors the patched model keeps of it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from torch import nn

from ..ops.attention import attention_flops
from .architectures import adapter_for
from .retention import Retention, keep_counts, validate_retention
from .sentence import is_sentence_transformer, transformer_module


def model_flops(
    model: nn.Module,
    batch: int,
    seq_len: int,
    retention: Retention | None = None,
    *,
    lengths: Sequence[int] | None = None,
) -> int:
    """Forward FLOPs of ``model`` on ``batch`` sequences padded to ``seq_len``.

    Args:
        model: a model :func:`~powerbert_kernels.apply_power_bert` accepts (patched or not); for a
            SentenceTransformer, its encoder.
        batch: number of sequences (for multiple choice: examples x choices).
        seq_len: padded length N.
        retention: the configuration to count, or ``None`` for the stock model (every vector kept).
        lengths: (batch,) real tokens of every row, each in [1, seq_len]: count every row at its own
            length instead of the whole batch at ``seq_len``.
    """
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be at least 1, got {batch} and {seq_len}")
    if is_sentence_transformer(model):
        model = transformer_module(model).auto_model
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    if retention is not None:
        retention = validate_retention(retention, dims["layers"], model.config.max_position_embeddings)
    if lengths is None:
        return _flops(model, adapter, dims, batch, seq_len, retention)
    lengths = [int(n) for n in lengths]
    if len(lengths) != batch:
        raise ValueError(f"lengths must have one entry per row (batch={batch}), got {len(lengths)}")
    if any(not 1 <= n <= seq_len for n in lengths):
        raise ValueError(f"lengths must each be between 1 and seq_len={seq_len}, got {lengths}")
    return sum(count * _flops(model, adapter, dims, 1, n, retention) for n, count in Counter(lengths).items())


def _flops(model: nn.Module, adapter, dims: dict[str, int], batch: int, seq_len: int, retention) -> int:
    base = adapter.base_model(model)
    D, H, ffn, L = dims["hidden"], dims["heads"], dims["ffn_weights"], dims["layers"]
    A = H * (D // H)
    keeps = [seq_len] * L if retention is None else keep_counts(retention, seq_len)
    total, received = 0, seq_len
    for kept in keeps:
        rows = batch * received
        total += 2 * rows * D * 3 * A  # Q, K, V projections
        total += attention_flops(batch, received, H, D // H)
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


def flop_ratio(
    model: nn.Module, batch: int, seq_len: int, retention: Retention, *, lengths: Sequence[int] | None = None
) -> float:
    """Stock FLOPs over PoWER-BERT FLOPs at this shape (per row with ``lengths``): the ideal speed-up."""
    stock = model_flops(model, batch, seq_len, lengths=lengths)
    return stock / model_flops(model, batch, seq_len, retention, lengths=lengths)
