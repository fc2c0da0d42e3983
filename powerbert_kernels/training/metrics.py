"""Metrics in points (x100, as GLUE reports them): accuracy, Matthews correlation and F1 for
classification, Pearson and Spearman correlation for regression (STS-B).

Small and dependency-free (no scikit-learn, no SciPy). The classification metrics take integer
predictions and labels of the same length, the regression ones real-valued scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

METRICS = ("accuracy", "mcc", "f1")
"""Names accepted by ``--metric``: ``mcc`` is the Matthews correlation (CoLA), ``f1`` the F1 score of
class 1 for two classes and the macro average over classes otherwise (MRPC/QQP report the former)."""

REGRESSION_METRICS = ("pearson", "spearman")
"""Names accepted by ``--metric`` for regression tasks (real-valued labels): the Pearson correlation
of the scores with the labels, and the Spearman correlation (Pearson of their ranks)."""


def _arrays(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, ...]:
    p = np.asarray(predictions).astype(np.int64).reshape(-1)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels must have the same length, got {p.size} and {y.size}")
    if p.size == 0:
        raise ValueError("predictions and labels are empty: nothing to score")
    return p, y


def confusion_matrix(predictions, labels, num_classes: int | None = None) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class."""
    p, y = _arrays(predictions, labels)
    k = int(max(p.max(), y.max()) + 1) if num_classes is None else num_classes
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k)


def accuracy(predictions, labels) -> float:
    """Fraction of correct predictions, x100."""
    p, y = _arrays(predictions, labels)
    return float((p == y).mean() * 100.0)


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation coefficient x100 (Gorodkin's K-class form; the usual MCC for two classes).

    ``(c*s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2) (s^2 - sum t_k^2))`` with c correct, s samples,
    p_k predicted and t_k true counts of class k. 0 when either side is constant (undefined otherwise),
    the convention of GLUE's scorer.
    """
    cm = confusion_matrix(predictions, labels).astype(np.float64)
    t, p = cm.sum(axis=1), cm.sum(axis=0)
    c, s = np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return 0.0 if denom == 0 else float((c * s - t @ p) / denom * 100.0)


def f1_score(predictions, labels, num_classes: int | None = None) -> float:
    """F1 x100: of class 1 when there are two classes, else the unweighted mean over classes.

    A class that is never predicted nor present scores 0 (it has no precision or recall).
    """
    cm = confusion_matrix(predictions, labels, num_classes).astype(np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # predicted + true = 2 tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if cm.shape[0] <= 2:
        return float(f1[1] * 100.0) if cm.shape[0] == 2 else 0.0
    return float(f1.mean() * 100.0)


def all_metrics(predictions, labels, num_classes: int | None = None) -> dict[str, float]:
    """``{"accuracy", "mcc", "f1"}``, each x100."""
    return {
        "accuracy": accuracy(predictions, labels),
        "mcc": matthews_corrcoef(predictions, labels),
        "f1": f1_score(predictions, labels, num_classes),
    }


def _scores(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels must have the same length, got {p.size} and {y.size}")
    if p.size == 0:
        raise ValueError("predictions and labels are empty: nothing to score")
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise ValueError("predictions and labels must be finite numbers")
    return p, y


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    # Centred in float64 first: the textbook one-pass form loses every digit on scores with a large
    # common offset. 0 when either side is constant (undefined otherwise), as for the MCC.
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc @ xc) * (yc @ yc))
    return 0.0 if denom == 0 else float(np.clip((xc @ yc) / denom, -1.0, 1.0) * 100.0)


def ranks(values) -> np.ndarray:
    """(n,) float64 ranks 1..n of ``values`` (n,); tied values share the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="stable")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    out = np.empty(x.size, dtype=np.float64)
    out[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return out


def pearson(predictions, labels) -> float:
    """Pearson correlation x100 of real-valued predictions (n,) with labels (n,); 0 when either is constant."""
    p, y = _scores(predictions, labels)
    return _correlation(p, y)


def spearman(predictions, labels) -> float:
    """Spearman rank correlation x100: Pearson of the ranks (ties averaged); 0 when either is constant."""
    p, y = _scores(predictions, labels)
    return _correlation(ranks(p), ranks(y))


def regression_metrics(predictions, labels) -> dict[str, float]:
    """``{"pearson", "spearman"}``, each x100, of scores (n,) against labels (n,)."""
    return {"pearson": pearson(predictions, labels), "spearman": spearman(predictions, labels)}


def compute_metrics_fn(num_classes: int, regression: bool = False) -> Callable[[object], dict[str, float]]:
    """A ``Trainer(compute_metrics=...)`` callable: logits (B, K) and label ids (B,) -> all metrics;
    with ``regression``, scores (B, 1) and real labels (B,) -> Pearson and Spearman."""

    def compute(eval_prediction) -> dict[str, float]:
        logits, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        if regression:
            return regression_metrics(np.asarray(logits)[..., 0], labels)
        return all_metrics(np.asarray(logits).argmax(axis=-1), labels, num_classes)

    return compute
