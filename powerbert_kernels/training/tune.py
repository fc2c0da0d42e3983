"""Choosing a retention configuration without retraining: a greedy search over per-layer counts.

:func:`tune_retention` scores a fine-tuned classifier (or regression model) patched at candidate
configurations on the rows it is given; no weight changes (the search works on a copy, the caller's
model is left as it was). It needs no training data, and with ``labels=None`` no labels either: the
metric is then the agreement with the unpatched model, so a sample of unlabelled traffic suffices. For a
classifier the agreement is the percentage of rows given the unpatched model's class; for a regression
model (one real-valued output, STS-B) it is the Pearson correlation x100 of the patched model's scores
with the unpatched model's, so a drop of one point allows scores that correlate at 0.99.

What the search explores, and what it costs:

- Every layer's count comes from a geometric grid: N, 3N/4, 9N/16, ... down to 1 (14 values for N=64).
- It starts from keeping everything and lowers one layer at a time by one grid step; the new count caps
  every later layer, so every configuration tried is non-increasing (layer j keeps at most what layer
  j-1 kept).
- A round takes the step that loses the least metric per FLOP saved (FLOPs counted at ``batch_size``
  x N, as the FLOP ratio is). Each layer's score from an earlier round orders the candidates and only the
  most promising are re-scored (lazy greedy): a round usually costs one or two evaluations, not one
  per layer, and a configuration is never scored twice.
- With ``max_drop``: a step that takes the metric below the unpatched model's minus ``max_drop`` freezes
  that layer at its count (the search is monotone: a frozen layer is not lowered again). It ends when
  every layer is frozen or keeps 1, or after ``max_evals`` evaluations; the answer is the highest FLOP
  ratio within the drop among everything scored.
- With ``target_speedup``: no layer freezes; whenever an accepted step's FLOP ratio reaches the target
  the speed-up is measured (interleaved with the unpatched model), and the first step measured at or
  above the target is the answer: the greedy path lost the least metric to get there.

Part of the rows (``holdout``) is kept out of the search: the chosen configuration is scored on them
too, so the drop it was chosen for can be compared with the drop on rows it was not chosen on.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..models import apply_power_bert, keep_counts, model_flops
from ..models.loading import is_regression
from .config import resolve_metric
from .measure import eval_set_flop_ratio
from .metrics import METRICS, REGRESSION_METRICS, all_metrics, pearson, regression_metrics

logger = logging.getLogger(__name__)

AGREEMENT = "agreement"
"""The metric without labels: percentage of rows where the patched model predicts the unpatched model's
class, or for a regression model the Pearson correlation x100 of the two models' scores."""
MIN_ROWS = 20
GRID_FACTOR = 0.75


@dataclass
class TuneResult:
    """What :func:`tune_retention` found.

    Attributes:
        retention: the chosen configuration, one count per layer (non-increasing).
        metric_name: ``accuracy``/``mcc``/``f1`` (``pearson``/``spearman`` for a regression model), or
            ``agreement`` without labels (points).
        search_metric, holdout_metric: the chosen configuration's metric on the search rows and on the
            held-out rows (``None`` without held-out rows).
        reference_search, reference_holdout: the unpatched model's metric on the same rows.
        flop_ratio: stock over PoWER-BERT FLOPs at ``batch_size`` x ``max_length``.
        flop_ratio_eval_set: the same over all rows batched in order with dynamic padding.
        speedup: measured against the unpatched model (``None`` when not measured).
        tried: every configuration scored, in order: ``retention``, ``metric``, ``flop_ratio``,
            ``within`` (inside the allowed drop), ``accepted`` (a step of the greedy path), ``speedup``.
        evaluations: configurations scored; stopped: why the search ended.
    """

    retention: list[int]
    kept_per_layer: list[int]
    metric_name: str
    search_metric: float
    holdout_metric: float | None
    reference_search: float
    reference_holdout: float | None
    flop_ratio: float
    flop_ratio_eval_set: float
    speedup: float | None
    baseline_ms: float | None
    power_ms: float | None
    mode: str
    max_drop: float | None
    target_speedup: float | None
    max_length: int
    batch_size: int
    num_rows: int
    num_search: int
    num_holdout: int
    evaluations: int
    stopped: str
    tried: list[dict] = field(default_factory=list)
    environment: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def count_grid(max_length: int) -> list[int]:
    """Descending counts a layer may take: N, then x0.75 per step (each step at least one lower), to 1."""
    grid, value = [max_length], float(max_length)
    while grid[-1] > 1:
        value *= GRID_FACTOR
        grid.append(max(1, min(grid[-1] - 1, round(value))))
    return grid


def _next_lower(grid: list[int], count: int) -> int | None:
    return next((g for g in grid if g < count), None)


def _lower(config: tuple[int, ...], layer: int, count: int) -> tuple[int, ...]:
    """``config`` with ``layer`` set to ``count`` and every later layer capped by it."""
    return tuple(c if j < layer else min(c, count) for j, c in enumerate(config))


class _Batches:
    """Rows tokenized once, sorted by length and padded per batch: every evaluation reuses them.

    Sorting by length pads little; it does not change any prediction, since a layer keeps
    ``min(l_j, n)`` of a batch's n vectors and padding ranks last.
    """

    def __init__(self, tokenizer, texts, pairs, max_length: int, batch_size: int, device: torch.device) -> None:
        encoded = tokenizer(
            list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length
        )
        self.lengths = [len(ids) for ids in encoded["input_ids"]]
        self.order = sorted(range(len(self.lengths)), key=lambda i: self.lengths[i])
        keys = list(encoded.keys())
        self.batches = []
        for start in range(0, len(self.order), batch_size):
            rows = self.order[start : start + batch_size]
            features = [{k: encoded[k][i] for k in keys} for i in rows]
            padded = tokenizer.pad(features, return_tensors="pt")
            self.batches.append({k: v.to(device) for k, v in padded.items()})

    @torch.inference_mode()
    def predict(self, model: nn.Module, regression: bool = False) -> np.ndarray:
        """(rows,) int64 predicted class per row, or float64 score with ``regression``, in the rows' own order."""
        out = np.empty(len(self.order), dtype=np.float64 if regression else np.int64)
        if regression:
            predictions = [model(**batch).logits[:, 0].double().cpu() for batch in self.batches]
        else:
            predictions = [model(**batch).logits.argmax(dim=-1).cpu() for batch in self.batches]
        out[self.order] = torch.cat(predictions).numpy()
        return out


def _check_arguments(
    model,
    texts,
    labels,
    pairs,
    max_drop,
    target_speedup,
    holdout,
    max_length,
    batch_size,
    max_evals,
    bench_repeats,
    measure_speed,
) -> None:
    if not type(model).__name__.endswith("ForSequenceClassification") or not hasattr(model, "config"):
        raise ValueError(
            "model: expected a fine-tuned sequence classifier (a *ForSequenceClassification), "
            f"got {type(model).__name__}"
        )
    regression = is_regression(model.config)
    if not regression and getattr(model.config, "num_labels", 0) < 2:
        raise ValueError("model: a classifier with at least two labels, or a regression model, is needed")
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts: expected a sequence of strings, got {type(texts).__name__}")
    if len(texts) < MIN_ROWS:
        raise ValueError(f"texts: need at least {MIN_ROWS} rows to choose a configuration, got {len(texts)}")
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"text_pairs: expected one per text ({len(texts)}), got {len(pairs)}")
    if labels is not None and regression:
        if len(labels) != len(texts):
            raise ValueError(f"labels: expected one per text ({len(texts)}), got {len(labels)}")
        scores = np.asarray(labels, dtype=np.float64)
        if not np.isfinite(scores).all():
            raise ValueError("labels: a regression model's labels must be finite numbers")
        if np.unique(scores).size < 2:
            raise ValueError(
                f"labels: every row has the same value ({scores[0]:g}); a correlation needs at least two "
                "(pass labels=None to score agreement with the unpatched model instead)"
            )
    elif labels is not None:
        if len(labels) != len(texts):
            raise ValueError(f"labels: expected one per text ({len(texts)}), got {len(labels)}")
        values = set(int(v) for v in labels)
        if len(values) < 2:
            raise ValueError(
                f"labels: the rows hold a single class ({sorted(values)}); the metric needs at least two "
                "(pass labels=None to score agreement with the unpatched model instead)"
            )
        if min(values) < 0 or max(values) >= model.config.num_labels:
            raise ValueError(f"labels: ids must be in [0, {model.config.num_labels}), got {sorted(values)}")
    if target_speedup is None:
        if max_drop is None or not math.isfinite(max_drop) or max_drop < 0:
            raise ValueError(f"max_drop must be a finite number of points >= 0, got {max_drop!r}")
    else:
        if not math.isfinite(target_speedup) or target_speedup <= 1:
            raise ValueError(f"target_speedup must be > 1 (a speed-up over the unpatched model), got {target_speedup}")
        if not measure_speed:
            raise ValueError("target_speedup: the speed-up is measured; it cannot be reached with measure_speed=False")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout}")
    if round(len(texts) * (1 - holdout)) < MIN_ROWS // 2:
        raise ValueError(f"holdout {holdout} leaves fewer than {MIN_ROWS // 2} of {len(texts)} rows to search on")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if max_length > model.config.max_position_embeddings:
        raise ValueError(
            f"max_length {max_length} exceeds the model's maximum positions ({model.config.max_position_embeddings})"
        )
    for name, value in (("batch_size", batch_size), ("max_evals", max_evals), ("bench_repeats", bench_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def tune_retention(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int] | Sequence[float] | None = None,
    *,
    text_pairs: Sequence[str] | None = None,
    max_drop: float = 1.0,
    target_speedup: float | None = None,
    metric: str | None = None,
    max_length: int = 64,
    batch_size: int = 64,
    holdout: float = 0.5,
    max_evals: int = 100,
    measure_speed: bool = True,
    bench_repeats: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Find a retention configuration for a fine-tuned classifier without changing any weight.

    See the module docstring for the search. ``model`` is not modified: the search patches a copy.

    Args:
        model: a fine-tuned ``*ForSequenceClassification`` (unpatched), on the device to score on.
        tokenizer: its tokenizer.
        texts: the rows (at least 20); ``text_pairs``: their second texts, for sentence-pair tasks.
        labels: (rows,) label ids (real-valued labels for a regression model), or ``None`` to score the
            agreement with the unpatched model (see :data:`AGREEMENT`).
        max_drop: allowed loss in points against the unpatched model on the search rows.
        target_speedup: instead: the most accurate configuration on the greedy path whose measured
            speed-up reaches this (> 1); raises ``ValueError`` naming the best reached if none does.
        metric: ``accuracy``, ``mcc`` or ``f1`` (with labels; default accuracy), ``pearson`` or
            ``spearman`` for a regression model (default pearson).
        max_length: N, tokens per row (longer rows are truncated); the FLOP ratio is counted at it.
        batch_size: rows per evaluation batch, and the batch of the FLOP ratio and of the timing.
        holdout: fraction of the rows kept out of the search to check the chosen configuration on.
        max_evals: at most this many configurations are scored.
        measure_speed: time each accepted configuration against the unpatched model (``bench_repeats``
            interleaved repeats at ``batch_size`` x ``max_length``).
        seed: the split into search and held-out rows.
        progress: a progress bar over the evaluations.

    Returns:
        A :class:`TuneResult`; apply it with ``apply_power_bert(model, result.retention)``.
    """
    _check_arguments(
        model,
        texts,
        labels,
        text_pairs,
        max_drop,
        target_speedup,
        holdout,
        max_length,
        batch_size,
        max_evals,
        bench_repeats,
        measure_speed,
    )
    if metric is not None and metric not in (*METRICS, *REGRESSION_METRICS):
        raise ValueError(f"metric must be one of {[*METRICS, *REGRESSION_METRICS]}, got {metric!r}")
    metric = resolve_metric(metric, is_regression(model.config), arg="metric")
    was_training = model.training
    try:
        return _tune(
            model.eval(),
            tokenizer,
            texts,
            labels,
            text_pairs,
            max_drop,
            target_speedup,
            metric,
            max_length,
            batch_size,
            holdout,
            max_evals,
            measure_speed,
            bench_repeats,
            seed,
            progress,
        )
    finally:
        model.train(was_training)


def _tune(
    model,
    tokenizer,
    texts,
    labels,
    text_pairs,
    max_drop,
    target_speedup,
    metric,
    max_length,
    batch_size,
    holdout,
    max_evals,
    measure_speed,
    bench_repeats,
    seed,
    progress,
) -> TuneResult:
    from tqdm.auto import tqdm

    from ..benchmarking import compare_models, environment
    from ..models.architectures import adapter_for

    adapter_for(model)  # refuses an architecture that cannot be patched before any work
    device = next(model.parameters()).device
    num_classes = model.config.num_labels
    regression = is_regression(model.config)
    metric_name = metric if labels is not None else AGREEMENT
    indices = list(range(len(texts)))
    random.Random(seed).shuffle(indices)
    num_search = round(len(texts) * (1 - holdout))
    parts = {"search": sorted(indices[:num_search]), "holdout": sorted(indices[num_search:])}

    def subset(values, rows):
        return None if values is None else [values[i] for i in rows]

    batches = {
        name: _Batches(tokenizer, subset(texts, rows), subset(text_pairs, rows), max_length, batch_size, device)
        for name, rows in parts.items()
        if rows
    }
    work = copy.deepcopy(model).eval()
    stock_predictions = {name: b.predict(work, regression) for name, b in batches.items()}
    label_type = np.float64 if regression else np.int64
    truth = {
        name: (
            np.asarray(subset(labels, parts[name]), dtype=label_type) if labels is not None else stock_predictions[name]
        )
        for name in batches
    }

    def score(name: str, predictions: np.ndarray) -> float:
        if labels is None:
            if regression:
                return pearson(predictions, truth[name])
            return float((predictions == truth[name]).mean() * 100.0)
        if regression:
            return regression_metrics(predictions, truth[name])[metric]
        return all_metrics(predictions, truth[name], num_classes)[metric]

    reference = {name: score(name, p) for name, p in stock_predictions.items()}
    num_layers = work.config.num_hidden_layers
    full = tuple([max_length] * num_layers)
    stock_flops = model_flops(work, batch_size, max_length)

    def flops(config) -> int:
        return model_flops(work, batch_size, max_length, list(config))

    timing_inputs = None
    if measure_speed:
        # The shape the FLOP ratio is counted at: the first batch_size search rows padded to max_length.
        rows = parts["search"][:batch_size]
        encoded = tokenizer(
            subset(texts, rows),
            subset(text_pairs, rows),
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        timing_inputs = {k: v.to(device) for k, v in encoded.items()}
    stock_model = model

    tried: dict[tuple[int, ...], dict] = {}
    bar = tqdm(total=max_evals, desc="configurations", disable=not progress, leave=False)
    floor = None if target_speedup is not None else reference["search"] - max_drop

    def evaluate(config: tuple[int, ...]) -> dict:
        if config not in tried:
            if config == full:
                value = reference["search"]
            else:
                apply_power_bert(work, list(config))
                value = score("search", batches["search"].predict(work, regression))
            tried[config] = {
                "retention": list(config),
                "metric": value,
                "flop_ratio": stock_flops / flops(config),
                "within": floor is None or value >= floor,
                "accepted": False,
                "speedup": None,
            }
            bar.update(1)
            bar.set_postfix_str(f"{metric_name} {value:.2f} at {list(config)}")
        return tried[config]

    def measure(config: tuple[int, ...]) -> dict:
        entry = tried[config]
        if measure_speed and entry["speedup"] is None:
            apply_power_bert(work, list(config))
            result = compare_models(stock_model, work, timing_inputs, repeats=bench_repeats, measure_memory=False)
            entry.update(speedup=result.speedup, baseline_ms=result.baseline_ms, power_ms=result.power_ms)
        return entry

    grid = count_grid(max_length)
    current = full
    evaluate(current)["accepted"] = True
    frozen: set[int] = set()
    stale: dict[int, float] = {}
    stopped = "every layer is at 1 or frozen"
    try:
        while True:
            candidates = [j for j in range(num_layers) if j not in frozen and _next_lower(grid, current[j]) is not None]
            if not candidates:
                break
            if len(tried) >= max_evals and not any(
                _lower(current, j, _next_lower(grid, current[j])) in tried for j in candidates
            ):
                stopped = f"max_evals ({max_evals}) reached"
                break
            here = tried[current]
            # Lazy greedy: re-score candidates in the order of their last score (never scored first); the
            # first whose fresh score is no worse than every other's last score is taken.
            pending = sorted(candidates, key=lambda j: stale.get(j, -math.inf))
            best = None
            while pending:
                j = pending.pop(0)
                step = _lower(current, j, _next_lower(grid, current[j]))
                if step not in tried and len(tried) >= max_evals:
                    continue
                entry = evaluate(step)
                if not entry["within"]:
                    frozen.add(j)
                    stale.pop(j, None)
                    continue
                saved = flops(current) - flops(step)
                # Points lost per GFLOP saved (negative: the step gains); ties go to the larger saving.
                cost = (here["metric"] - entry["metric"]) / (saved / 1e9)
                stale[j] = cost
                key = (cost, -saved)
                if best is None or key < best[0]:
                    best = (key, j, step)
                if not pending or best[0][0] <= min(stale.get(k, -math.inf) for k in pending):
                    break
            if best is None:
                continue
            current = best[2]
            tried[current]["accepted"] = True
            logger.info(
                "tune: %s, %s %.2f, FLOP ratio %.2fx (%d configurations scored)",
                list(current),
                metric_name,
                tried[current]["metric"],
                tried[current]["flop_ratio"],
                len(tried),
            )
            if target_speedup is not None and tried[current]["flop_ratio"] >= target_speedup:
                if measure(current)["speedup"] >= target_speedup:
                    stopped = f"measured speed-up reached {target_speedup:g}x"
                    break
    finally:
        bar.close()

    if target_speedup is not None:
        if not stopped.startswith("measured"):
            path = [e for e in tried.values() if e["accepted"]]
            fastest = max(path, key=lambda e: e["flop_ratio"])
            measure(tuple(fastest["retention"]))
            why = "within max_evals" if stopped.startswith("max_evals") else "on this machine"
            raise ValueError(
                f"target_speedup {target_speedup:g}x is not reachable {why}: the best reached is "
                f"{fastest['speedup']:.2f}x measured (FLOP ratio {fastest['flop_ratio']:.2f}x) at "
                f"{fastest['retention']}, {metric_name} {fastest['metric']:.2f}"
            )
        chosen = current
    else:
        within = [e for e in tried.values() if e["within"]]
        chosen = tuple(max(within, key=lambda e: (e["flop_ratio"], e["metric"]))["retention"])
        for config, entry in tried.items():
            if entry["accepted"] and config != full:
                measure(config)
        measure(chosen)

    entry = tried[chosen]
    holdout_metric = None
    if "holdout" in batches:
        if chosen == full:
            holdout_metric = reference["holdout"]
        else:
            apply_power_bert(work, list(chosen))
            holdout_metric = score("holdout", batches["holdout"].predict(work, regression))
    all_lengths = [0] * len(texts)
    for name, rows in parts.items():
        if name in batches:
            for i, length in zip(rows, batches[name].lengths, strict=True):
                all_lengths[i] = length
    result = TuneResult(
        retention=list(chosen),
        kept_per_layer=keep_counts(list(chosen), max_length),
        metric_name=metric_name,
        search_metric=entry["metric"],
        holdout_metric=holdout_metric,
        reference_search=reference["search"],
        reference_holdout=reference.get("holdout"),
        flop_ratio=entry["flop_ratio"],
        flop_ratio_eval_set=eval_set_flop_ratio(work, all_lengths, batch_size, list(chosen)),
        speedup=entry["speedup"],
        baseline_ms=entry.get("baseline_ms"),
        power_ms=entry.get("power_ms"),
        mode="target_speedup" if target_speedup is not None else "max_drop",
        max_drop=None if target_speedup is not None else float(max_drop),
        target_speedup=target_speedup,
        max_length=max_length,
        batch_size=batch_size,
        num_rows=len(texts),
        num_search=len(parts["search"]),
        num_holdout=len(parts["holdout"]),
        evaluations=len(tried),
        stopped=stopped,
        tried=list(tried.values()),
        environment=environment(device) if measure_speed else None,
    )
    logger.info(
        "tune: %s (%d configurations scored, %s): %s search %.2f (unpatched %.2f)%s, FLOP ratio %.2fx",
        result.retention,
        result.evaluations,
        stopped,
        metric_name,
        result.search_metric,
        result.reference_search,
        "" if holdout_metric is None else f", held out {holdout_metric:.2f} (unpatched {result.reference_holdout:.2f})",
        result.flop_ratio,
    )
    return result
