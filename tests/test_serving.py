"""Serving a patched model: batch-independent rows, FLOPs per row, input conversion, empty batches,
concurrent calls, pickling and loading."""

from __future__ import annotations

import copy
import gc
import io
import json
import multiprocessing
import pickle
import threading
import weakref

import numpy as np
import pytest
import torch
from transformers import AutoModel, BertConfig, BertForSequenceClassification, BertModel

from powerbert_kernels import (
    apply_power_bert,
    flop_ratio,
    from_pretrained,
    is_patched,
    model_flops,
    ops,
    remove_power_bert,
)
from powerbert_kernels.models import LayerKeep, keep_counts, layer_plan, row_keep_counts, validate_retention

INTS = [12, 9, 7, 4]
FRACTIONS = [0.8, 0.55, 0.4, 0.15]


def tiny_config(**kwargs) -> BertConfig:
    return BertConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=500,
        max_position_embeddings=64,
        num_labels=3,
        **kwargs,
    )


@pytest.fixture(scope="module")
def classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config()).eval()


def padded_batch(rows: list[torch.Tensor], side: str) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, N) of token rows padded (with id 0) to the longest.

    Left-padded rows get position ids counted from their first real token, as a left-padding server
    passes them (BERT's default positions would shift every token by the padding, in the stock model too).
    """
    N = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), N, dtype=torch.long)
    mask = torch.zeros(len(rows), N, dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(N - len(row), N)
        ids[b, span], mask[b, span] = row, 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if side == "left":
        batch["position_ids"] = (mask.cumsum(dim=1) - 1).clamp_min(0)
    return batch


def random_rows(lengths: list[int], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 500, (n,), generator=generator) for n in lengths]


# ---------------------------------------------------------------------------------------------------------
# A row's result does not depend on its batch-mates.


@pytest.mark.parametrize("retention", [INTS, FRACTIONS], ids=["counts", "fractions"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_row_alone_equals_row_in_any_batch(classifier, retention, side):
    encoder = apply_power_bert(copy.deepcopy(classifier.bert), retention)
    head = apply_power_bert(copy.deepcopy(classifier), retention)
    target = 17
    rows = random_rows([target, 4, 9, 30, 23, 1], seed=1)
    batches = {
        "shorter neighbours": [rows[1], rows[0], rows[2]],
        "longer neighbours": [rows[3], rows[0], rows[4]],
        "both": [rows[5], rows[3], rows[0], rows[1]],
    }
    with torch.no_grad():
        alone = encoder(input_ids=rows[0][None])
        alone_logits = head(input_ids=rows[0][None]).logits[0]
        for name, batch_rows in batches.items():
            b = next(i for i, r in enumerate(batch_rows) if r is rows[0])
            batch = padded_batch(batch_rows, side)
            out = encoder(**batch)
            kept = out.kept_attention_mask[b]
            assert kept.sum() == alone.kept_attention_mask[0].sum() == row_keep_counts(retention, [target])[0][-1]
            offset = batch["input_ids"].shape[1] - target if side == "left" else 0
            assert torch.equal(out.kept_indices[b][kept] - offset, alone.kept_indices[0]), name
            assert (out.last_hidden_state[b][kept] - alone.last_hidden_state[0]).abs().max() <= 1e-5, name
            assert (out.pooler_output[b] - alone.pooler_output[0]).abs().max() <= 1e-5, name
            for layer, (mask, want) in enumerate(
                zip(out.layer_kept_attention_mask, alone.layer_kept_indices, strict=True)
            ):
                got = out.layer_kept_indices[layer][b][mask[b]] - offset
                assert torch.equal(got, want[0]), f"{name}: layer {layer + 1}"
            logits = head(**batch).logits[b]
            assert (logits - alone_logits).abs().max() <= 1e-5, name


def test_fraction_counts_follow_each_rows_length(classifier):
    encoder = apply_power_bert(copy.deepcopy(classifier.bert), FRACTIONS)
    lengths = [30, 10, 3]
    batch = padded_batch(random_rows(lengths, seed=2), "right")
    with torch.no_grad():
        out = encoder(**batch)
    counts = row_keep_counts(FRACTIONS, lengths)
    assert counts == [[24, 17, 12, 5], [8, 6, 4, 2], [3, 2, 2, 1]]
    got = [[int(m[b].sum()) for m in out.layer_kept_attention_mask] for b in range(3)]
    assert got == counts
    # The layer outputs the largest count; every row's kept real vectors come first.
    assert [m.shape[1] for m in out.layer_kept_attention_mask] == [24, 17, 12, 5]
    for m in out.layer_kept_attention_mask:
        n = m.sum(dim=1, keepdim=True)
        assert torch.equal(m, torch.arange(m.shape[1])[None] < n)


def test_layer_plan():
    assert layer_plan([6, 4, 2], 5) == [LayerKeep(5), LayerKeep(4), LayerKeep(2)]
    assert [p.width for p in layer_plan([6, 4, 2], 5, [5, 2])] == keep_counts([6, 4, 2], 5)
    plan = layer_plan([0.5, 0.5, 0.25], 20, [20, 10])
    assert plan == [LayerKeep(10, (10, 5)), LayerKeep(10), LayerKeep(5, (5, 3))]
    # Without lengths, or with rows of the padded length, a fraction resolves against N.
    assert layer_plan([0.5, 0.25], 8) == layer_plan([0.5, 0.25], 8, [8, 8]) == [LayerKeep(4), LayerKeep(2)]
    assert [p.width for p in layer_plan([0.5], 8, [])] == [4]
    assert row_keep_counts([3, 2], [1, 5]) == [[1, 1], [3, 2]]


# ---------------------------------------------------------------------------------------------------------
# FLOPs per row.


def test_model_flops_per_row(classifier):
    lengths = [30, 10, 3, 10]
    for retention in (None, INTS, FRACTIONS):
        want = sum(model_flops(classifier, 1, n, retention) for n in lengths)
        assert model_flops(classifier, 4, 30, retention, lengths=lengths) == want
    assert model_flops(classifier, 2, 7, FRACTIONS, lengths=[7, 7]) == model_flops(classifier, 2, 7, FRACTIONS)
    ratio = flop_ratio(classifier, 4, 30, FRACTIONS, lengths=lengths)
    assert ratio == pytest.approx(
        model_flops(classifier, 4, 30, lengths=lengths) / model_flops(classifier, 4, 30, FRACTIONS, lengths=lengths)
    )
    # A short row keeps fewer vectors of a fraction than the padded length would give it.
    assert model_flops(classifier, 1, 30, FRACTIONS, lengths=[10]) < model_flops(classifier, 1, 30, FRACTIONS)
    with pytest.raises(ValueError, match="lengths must have one entry per row"):
        model_flops(classifier, 2, 30, lengths=[3])
    with pytest.raises(ValueError, match="lengths must each be between 1 and seq_len=30"):
        model_flops(classifier, 2, 30, lengths=[3, 31])


# ---------------------------------------------------------------------------------------------------------
# Retention and exclude_self inputs.


@pytest.mark.parametrize(
    "retention, want",
    [
        (np.array([12, 9, 7, 4]), [12, 9, 7, 4]),
        ([np.int64(12), np.int32(9), np.uint8(7), np.int16(4)], [12, 9, 7, 4]),
        (torch.tensor([12, 9, 7, 4]), [12, 9, 7, 4]),
        (np.array(FRACTIONS), FRACTIONS),
        ([np.float64(0.8), np.float32(0.5), 0.25, 0.125], [0.8, 0.5, 0.25, 0.125]),
        (torch.tensor([1.0, 0.5, 0.25, 0.125]), [1.0, 0.5, 0.25, 0.125]),
        ([torch.tensor(4), torch.tensor(3), 2, 1], [4, 3, 2, 1]),
    ],
)
def test_retention_from_numpy_and_tensors(classifier, retention, want):
    got = validate_retention(retention, 4, 64)
    assert got == want and all(type(v) is type(want[0]) for v in got)
    model = apply_power_bert(copy.deepcopy(classifier), retention)
    assert json.loads(model.config.to_json_string())["power_bert_retention"] == want


@pytest.mark.parametrize(
    "retention, error, match",
    [
        (np.array([[4, 3], [2, 1]]), TypeError, "got a 2-D ndarray"),
        (torch.tensor([[4, 3, 2, 1]]), TypeError, "got a 2-D Tensor"),
        (torch.tensor([True, True, True, True]), TypeError, "ints \\(counts\\) or floats"),
        ([np.bool_(True)] * 4, TypeError, "ints \\(counts\\) or floats"),
        (np.array([4, 3, 2]), ValueError, "one entry per encoder layer \\(4\\)"),
        (np.array([4, 3, 2, 0]), ValueError, "retention\\[3\\] = 0"),
    ],
)
def test_bad_array_retention_is_refused(retention, error, match):
    with pytest.raises(error, match=match):
        validate_retention(retention, 4, 64)


@pytest.mark.parametrize("value", ["no", 1, 0, np.bool_(False)])
def test_exclude_self_must_be_a_bool(classifier, value):
    with pytest.raises(TypeError, match="exclude_self must be a bool"):
        apply_power_bert(copy.deepcopy(classifier), INTS, exclude_self=value)


def test_exclude_self_bool_is_stored(classifier):
    model = apply_power_bert(copy.deepcopy(classifier), INTS, exclude_self=True)
    assert model.config.power_bert_exclude_self is True


# ---------------------------------------------------------------------------------------------------------
# Empty and degenerate batches.


@pytest.mark.parametrize("retention", [INTS, FRACTIONS], ids=["counts", "fractions"])
@pytest.mark.parametrize("with_mask", [True, False])
def test_empty_batch_gets_empty_outputs(classifier, retention, with_mask):
    head = apply_power_bert(copy.deepcopy(classifier), retention)
    ids = torch.zeros(0, 20, dtype=torch.long)
    mask = torch.ones(0, 20, dtype=torch.long) if with_mask else None
    width = keep_counts(retention, 20)[-1]
    with torch.no_grad():
        out = head.bert(input_ids=ids, attention_mask=mask)
        logits = head(input_ids=ids, attention_mask=mask).logits
    assert out.last_hidden_state.shape == (0, width, 64)
    assert out.pooler_output.shape == (0, 64)
    assert out.kept_indices.shape == out.kept_attention_mask.shape == (0, width)
    assert [t.shape for t in out.layer_kept_indices] == [(0, w) for w in keep_counts(retention, 20)]
    assert logits.shape == (0, 3)


@pytest.mark.parametrize("backend", ["torch", None])
def test_ops_accept_an_empty_batch(backend):
    q = torch.randn(0, 7, 2, 8)
    mask = torch.ones(0, 7, dtype=torch.bool)
    out, significance = ops.attention_with_significance(q, q, q, mask, backend=backend)
    assert out.shape == (0, 7, 16) and significance.shape == (0, 7)
    out, significance = ops.attention_with_significance_ref(q, q, q, mask)
    assert out.shape == (0, 7, 16) and significance.shape == (0, 7)
    hidden, kept_mask, indices = ops.select_gather(torch.randn(0, 7, 16), significance, mask, 3, backend=backend)
    assert hidden.shape == (0, 3, 16) and kept_mask.shape == indices.shape == (0, 3)
    assert indices.dtype == torch.int64 and kept_mask.dtype == torch.bool


def test_zero_length_rows_are_refused(classifier):
    model = apply_power_bert(copy.deepcopy(classifier), INTS)
    with pytest.raises(ValueError, match="input_ids: every row needs at least one token"):
        model(input_ids=torch.zeros(2, 0, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------
# Concurrent calls on one model.


@pytest.mark.parametrize("retention", [INTS, FRACTIONS], ids=["counts", "fractions"])
def test_threads_sharing_one_model_get_their_own_outputs(classifier, retention):
    model = apply_power_bert(copy.deepcopy(classifier), retention)
    shapes = [(1, 5), (2, 31), (3, 12), (5, 20), (4, 8), (6, 40)]
    batches = []
    for i, (B, N) in enumerate(shapes):
        lengths = torch.randint(1, N + 1, (B,), generator=torch.Generator().manual_seed(i)).tolist()
        lengths[0] = N
        batches.append(padded_batch(random_rows(lengths, seed=10 + i), "right" if i % 2 else "left"))
    with torch.no_grad():
        expected = [model(**batch) for batch in batches]
    failures: list[str] = []
    start = threading.Barrier(len(batches))

    def serve(i: int) -> None:
        start.wait()
        with torch.no_grad():
            for _ in range(8):
                out = model(**batches[i])
                if not torch.equal(out.kept_indices, expected[i].kept_indices):
                    failures.append(f"batch {i}: kept_indices of another call {tuple(out.kept_indices.shape)}")
                if (out.logits - expected[i].logits).abs().max() > 1e-5:
                    failures.append(f"batch {i}: logits differ")

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]


def test_model_keeps_no_reference_to_a_calls_tensors(classifier):
    model = apply_power_bert(copy.deepcopy(classifier), FRACTIONS)
    batch = padded_batch(random_rows([9, 4], seed=3), "right")
    with torch.no_grad():
        out = model(**batch)
    refs = [weakref.ref(out.kept_indices), weakref.ref(out.logits)]
    del out
    gc.collect()
    assert all(ref() is None for ref in refs)


# ---------------------------------------------------------------------------------------------------------
# Pickling.


def _outputs(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state, out.kept_indices


def _round_trips(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    yield "torch.save", torch.load(buffer, weights_only=False)
    yield "pickle", pickle.loads(pickle.dumps(model))
    yield "deepcopy", copy.deepcopy(model)


@pytest.mark.parametrize("retention", [INTS, FRACTIONS], ids=["counts", "fractions"])
@pytest.mark.parametrize("bare", [False, True], ids=["head", "encoder"])
def test_patched_model_pickles(classifier, retention, bare):
    model = apply_power_bert(copy.deepcopy(classifier.bert if bare else classifier), retention, exclude_self=True)
    batch = padded_batch(random_rows([11, 3, 7], seed=4), "right")
    want, want_kept = _outputs(model, batch)
    for how, copied in _round_trips(model):
        assert is_patched(copied), how
        got, got_kept = _outputs(copied, batch)
        assert torch.equal(got, want) and torch.equal(got_kept, want_kept), how
        # The copy is patched on its own: removing its patch leaves the original's alone.
        remove_power_bert(copied)
        assert not is_patched(copied) and is_patched(model), how


def _run_in_worker(model, batch, threads):
    # The same thread count as the parent, so that the CPU matmuls reduce in the same order: bit-equal.
    torch.set_num_threads(threads)
    with torch.no_grad():
        out = model(**batch)
    return out.logits, out.kept_indices


def test_patched_model_runs_in_a_spawn_worker(classifier):
    model = apply_power_bert(copy.deepcopy(classifier), FRACTIONS)
    batch = padded_batch(random_rows([11, 3, 7], seed=5), "left")
    want, want_kept = _outputs(model, batch)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got, got_kept = pool.apply(_run_in_worker, (model, batch, torch.get_num_threads()))
    assert torch.equal(got, want) and torch.equal(got_kept, want_kept)


# ---------------------------------------------------------------------------------------------------------
# Loading and the stored configuration.


def test_from_pretrained_reapplies_the_stored_configuration(classifier, tmp_path):
    model = apply_power_bert(copy.deepcopy(classifier), FRACTIONS, exclude_self=True)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is BertForSequenceClassification and is_patched(loaded)
    assert loaded.config.power_bert_retention == FRACTIONS and loaded.config.power_bert_exclude_self is True
    batch = padded_batch(random_rows([13, 6], seed=6), "right")
    for got, want in zip(_outputs(loaded, batch), _outputs(model, batch), strict=True):
        assert torch.equal(got, want)
    encoder = from_pretrained(tmp_path, auto_class=AutoModel)
    assert type(encoder) is BertModel and is_patched(encoder)
    assert encoder(**batch).kept_indices.shape == (2, keep_counts(FRACTIONS, 13)[-1])


def test_from_pretrained_of_an_unpatched_model_says_so(classifier, tmp_path):
    copy.deepcopy(classifier).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="path_or_id: .* has no stored PoWER-BERT configuration"):
        from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="auto_class must be a class with from_pretrained"):
        from_pretrained(tmp_path, auto_class=dict)


def test_remove_power_bert_clears_the_stored_configuration(classifier, tmp_path):
    model = apply_power_bert(copy.deepcopy(classifier), INTS)
    remove_power_bert(model)
    assert not hasattr(model.config, "power_bert_retention")
    assert not hasattr(model.config, "power_bert_exclude_self")
    assert "forward" not in vars(model) and "forward" not in vars(model.bert)
    model.save_pretrained(tmp_path)
    assert "power_bert" not in (tmp_path / "config.json").read_text()
    # Patching again takes a configuration, as on any stock model.
    with pytest.raises(ValueError, match="retention: none given"):
        apply_power_bert(model)
    assert apply_power_bert(model, INTS).config.power_bert_retention == INTS
