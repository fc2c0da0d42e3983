"""What the report states about a trained model: its metrics, FLOP ratios and measured speed-up."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models import apply_power_bert, model_flops
from .metrics import all_metrics, regression_metrics


def padded_batch(tokenizer, dataset, batch_size: int, max_length: int) -> dict[str, torch.Tensor]:
    """The first ``batch_size`` rows of a tokenized dataset padded to ``max_length``: (B, N) tensors.

    This is the shape the FLOP ratio is counted at and the speed is measured at.
    """
    rows = [dataset[i] for i in range(min(batch_size, len(dataset)))]
    features = [{k: v for k, v in row.items() if k != "labels"} for row in rows]
    return dict(tokenizer.pad(features, padding="max_length", max_length=max_length, return_tensors="pt"))


def eval_set_flop_ratio(model: nn.Module, lengths: Sequence[int], batch_size: int, retention) -> float:
    """Stock over PoWER-BERT FLOPs summed over an eval set batched in order, each batch padded to its
    longest row (the collator's dynamic padding)."""
    stock = power = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        stock += model_flops(model, len(chunk), max(chunk))
        power += model_flops(model, len(chunk), max(chunk), retention)
    return stock / power


def measure_speed(model_path: str, inputs: dict[str, torch.Tensor], repeats: int = 10, retention=None) -> dict:
    """Interleaved timing of a saved PoWER-BERT model against the same weights unpatched.

    Both are loaded fresh from ``model_path`` (so the saved configuration's round trip is what gets
    timed, unless ``retention`` overrides it), in eval mode, on the GPU when there is one. Returns
    medians in ms, their ratio and the environment (see
    :func:`powerbert_kernels.benchmarking.compare_models`).
    """
    from transformers import AutoModelForSequenceClassification

    from ..benchmarking import compare_models, environment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    baseline = AutoModelForSequenceClassification.from_pretrained(model_path).to(device).eval()
    power = AutoModelForSequenceClassification.from_pretrained(model_path)
    power = apply_power_bert(power, retention).to(device).eval()
    result = compare_models(baseline, power, inputs, repeats=repeats, measure_memory=False)
    batch, seq_len = next(iter(inputs.values())).shape
    return {
        "speedup": result.speedup,
        "baseline_ms": result.baseline_ms,
        "power_ms": result.power_ms,
        "batch": int(batch),
        "seq_len": int(seq_len),
        "repeats": repeats,
        "environment": environment(device),
    }


@torch.inference_mode()
def predict_metrics(
    model: nn.Module, dataset, collator, batch_size: int, num_labels: int, regression: bool = False
) -> dict[str, float]:
    """All metrics (points) of ``model`` on a tokenized dataset with ``labels``, batched in order:
    accuracy/MCC/F1 of the predicted classes, or with ``regression`` Pearson/Spearman of the scores."""
    device = next(model.parameters()).device
    model.eval()
    predictions, labels = [], []
    for i in range(0, len(dataset), batch_size):
        batch = collator([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        labels.append(batch.pop("labels"))
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        predictions.append(logits[:, 0].float().cpu() if regression else logits.argmax(dim=-1).cpu())
    predicted, truth = torch.cat(predictions).numpy(), torch.cat(labels).numpy()
    if regression:
        return regression_metrics(predicted, truth)
    return all_metrics(predicted, truth, num_labels)
