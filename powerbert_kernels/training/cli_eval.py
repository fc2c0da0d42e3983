"""``powerbert eval``: score a saved PoWER-BERT classifier (or regression model) against the same
weights unpatched."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import EvalConfig

HELP = "evaluate a saved PoWER-BERT model: metric, FLOP ratio and measured speed-up against it unpatched"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli_args import add_dataclass_arguments
    from .config import GROUPS, EvalConfig

    add_dataclass_arguments(parser, EvalConfig, {"data": GROUPS["data"], "output": GROUPS["output"]})


def evaluate(cfg: EvalConfig) -> dict:
    """The ``eval`` result: metrics of the patched and unpatched model, FLOP ratios, speed-up."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from ..cli_args import check_max_positions, load_error
    from ..models import apply_power_bert, flop_ratio, keep_counts
    from ..models.loading import is_regression
    from ..models.retention import CONFIG_KEY, validate_retention
    from .config import validate_config
    from .data import load_glue, load_local, tokenize
    from .measure import eval_set_flop_ratio, measure_speed, padded_batch, predict_metrics

    validate_config(cfg)
    try:
        config = AutoConfig.from_pretrained(cfg.model)
    except OSError as e:
        raise load_error("--model", cfg.model, e) from e
    check_max_positions(cfg.max_length, config.max_position_embeddings, "--max-length")
    if cfg.retention is not None:
        retention = cfg.retention
    else:
        retention = getattr(config, CONFIG_KEY, None)
        if retention is None:
            raise ValueError(
                f"--model: {cfg.model} stores no PoWER-BERT configuration ({CONFIG_KEY}); pass --retention"
            )
    retention = validate_retention(list(retention), config.num_hidden_layers, config.max_position_embeddings)
    if cfg.glue_task is not None:
        data = load_glue(cfg.glue_task, with_train=False)
    else:
        data = load_local(
            cfg.eval_file,
            None,
            text_column=cfg.text_column,
            text_pair_column=cfg.text_pair_column,
            label_column=cfg.label_column,
            known_label2id=config.label2id,
            regression=is_regression(config),
        )
    regression = data.regression
    if regression != is_regression(config):
        raise ValueError(f"--glue-task: {cfg.glue_task} is a classification task but {cfg.model} is a regression model")
    if not regression and data.num_labels > config.num_labels:
        raise ValueError(f"--eval-file: the data has {data.num_labels} labels but the model only {config.num_labels}")
    metric = cfg.metric_for(regression)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    dataset = tokenize(data.eval, tokenizer, data, cfg.max_length)
    collator = DataCollatorWithPadding(tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    stock = AutoModelForSequenceClassification.from_pretrained(cfg.model).to(device)
    stock_metrics = predict_metrics(stock, dataset, collator, cfg.batch_size, config.num_labels, regression)
    power = apply_power_bert(AutoModelForSequenceClassification.from_pretrained(cfg.model), retention).to(device)
    power_metrics = predict_metrics(power, dataset, collator, cfg.batch_size, config.num_labels, regression)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    result = {
        "model": cfg.model,
        "task": "regression" if regression else "classification",
        "metric_name": metric,
        "power_metric": power_metrics[metric],
        "unpatched_metric": stock_metrics[metric],
        "power_metrics": power_metrics,
        "unpatched_metrics": stock_metrics,
        "retention": list(retention),
        "kept_per_layer": keep_counts(retention, cfg.max_length),
        "flop_ratio": flop_ratio(power, cfg.batch_size, cfg.max_length, retention),
        "flop_ratio_eval_set": eval_set_flop_ratio(power, lengths, cfg.batch_size, retention),
        "num_eval": len(dataset),
        "max_length": cfg.max_length,
    }
    if not cfg.no_speed:
        inputs = padded_batch(tokenizer, dataset, cfg.batch_size, cfg.max_length)
        result.update(measure_speed(cfg.model, inputs, cfg.bench_repeats, retention))
    return result


def run(args: argparse.Namespace) -> int:
    import json

    from ..cli_args import dataclass_from_args
    from .cli_train import setup_logging
    from .config import EvalConfig

    setup_logging()
    result = evaluate(dataclass_from_args(EvalConfig, args))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    name = result["metric_name"]
    speed = ""
    if result.get("speedup") is not None:
        speed = (
            f"speed-up {result['speedup']:.2f}x measured (batch {result['batch']}, length {result['seq_len']}, "
            f"{result['repeats']} interleaved repeats)   "
        )
    print(
        f"{result['model']}: {result['num_eval']} rows, max length {result['max_length']}\n"
        f"kept per layer: {result['kept_per_layer']}\n"
        f"{name}: PoWER-BERT {result['power_metric']:.2f}   same weights unpatched {result['unpatched_metric']:.2f}\n"
        f"{speed}FLOP ratio {result['flop_ratio']:.2f}x (eval set, dynamic padding: "
        f"{result['flop_ratio_eval_set']:.2f}x)"
    )
    return 0
