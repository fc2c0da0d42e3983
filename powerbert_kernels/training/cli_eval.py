"""``powerbert eval``: score a saved PoWER-BERT classifier against the same weights unpatched."""

from __future__ import annotations

import argparse

HELP = "evaluate a saved PoWER-BERT model: metric, FLOP ratio and measured speed-up against it unpatched"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_train import add_data_arguments

    parser.add_argument(
        "--model",
        required=True,
        help="a model folder saved by `powerbert train` (or any "
        "classifier whose config holds a retention configuration)",
    )
    add_data_arguments(parser, train=False)
    parser.add_argument(
        "--retention",
        help="comma-separated counts or fractions to use instead of the configuration stored in the model",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="eval batch; also the batch of the FLOP ratio and the timing (default: 64)",
    )
    parser.add_argument("--bench-repeats", type=int, default=10, help="interleaved timing repeats (default: 10)")
    parser.add_argument("--no-speed", action="store_true", help="skip the timing")
    parser.add_argument("--output", help="also write the result as JSON to this file")


def evaluate(args: argparse.Namespace) -> dict:
    """The ``eval`` result: metrics of the patched and unpatched model, FLOP ratios, speed-up."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from ..models import apply_power_bert, flop_ratio, keep_counts
    from ..models.retention import CONFIG_KEY, parse_retention, validate_retention
    from .data import GLUE_TASKS, load_glue, load_local, tokenize
    from .measure import eval_set_flop_ratio, measure_speed, padded_batch, predict_metrics

    if args.glue_task is None and args.eval_file is None:
        raise ValueError("data: give --eval-file or --glue-task")
    if args.glue_task is not None and args.eval_file is not None:
        raise ValueError("data: --glue-task and --eval-file are alternatives; give one")
    if args.max_length < 2:
        raise ValueError(f"--max-length must be an int >= 2, got {args.max_length}")
    if args.batch_size < 1 or args.bench_repeats < 1:
        raise ValueError("--batch-size and --bench-repeats must be at least 1")
    config = AutoConfig.from_pretrained(args.model)
    if args.max_length > config.max_position_embeddings:
        raise ValueError(
            f"--max-length {args.max_length} exceeds the model's maximum positions ({config.max_position_embeddings})"
        )
    if args.retention is not None:
        retention = parse_retention(args.retention)
    else:
        retention = getattr(config, CONFIG_KEY, None)
        if retention is None:
            raise ValueError(
                f"--model: {args.model} stores no PoWER-BERT configuration ({CONFIG_KEY}); pass --retention"
            )
    retention = validate_retention(list(retention), config.num_hidden_layers, config.max_position_embeddings)
    if args.glue_task is not None:
        data = load_glue(args.glue_task, with_train=False)
    else:
        data = load_local(
            args.eval_file,
            None,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            known_label2id=config.label2id,
        )
    if data.num_labels > config.num_labels:
        raise ValueError(f"--eval-file: the data has {data.num_labels} labels but the model only {config.num_labels}")
    metric = args.metric or (GLUE_TASKS[args.glue_task]["metric"] if args.glue_task else "accuracy")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = tokenize(data.eval, tokenizer, data, args.max_length)
    collator = DataCollatorWithPadding(tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    stock = AutoModelForSequenceClassification.from_pretrained(args.model).to(device)
    stock_metrics = predict_metrics(stock, dataset, collator, args.batch_size, config.num_labels)
    power = apply_power_bert(AutoModelForSequenceClassification.from_pretrained(args.model), retention).to(device)
    power_metrics = predict_metrics(power, dataset, collator, args.batch_size, config.num_labels)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    result = {
        "model": args.model,
        "metric_name": metric,
        "power_metric": power_metrics[metric],
        "unpatched_metric": stock_metrics[metric],
        "power_metrics": power_metrics,
        "unpatched_metrics": stock_metrics,
        "retention": list(retention),
        "kept_per_layer": keep_counts(retention, args.max_length),
        "flop_ratio": flop_ratio(power, args.batch_size, args.max_length, retention),
        "flop_ratio_eval_set": eval_set_flop_ratio(power, lengths, args.batch_size, retention),
        "num_eval": len(dataset),
        "max_length": args.max_length,
    }
    if not args.no_speed:
        inputs = padded_batch(tokenizer, dataset, args.batch_size, args.max_length)
        result.update(measure_speed(args.model, inputs, args.bench_repeats, retention))
    return result


def run(args: argparse.Namespace) -> int:
    import json

    from .cli_train import setup_logging

    setup_logging()
    try:
        result = evaluate(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        raise SystemExit(f"powerbert eval: error: {e}") from None
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
