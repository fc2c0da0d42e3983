"""``powerbert tune``: choose a retention configuration for a fine-tuned classifier (or regression model)
without retraining."""

from __future__ import annotations

import argparse
import os

HELP = "choose a PoWER-BERT configuration for a fine-tuned classifier or regression model without retraining"

TUNE_FILE = "tune.json"
PLOT_FILE = "tune.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli_args import device_name
    from .cli_train import add_data_arguments

    parser.add_argument("--model", required=True, help="a fine-tuned sequence classifier (local folder or hub id)")
    parser.add_argument(
        "--output-dir",
        required=True,
        help="new folder (or empty): the model with the chosen configuration stored, tune.json, tune.png",
    )
    add_data_arguments(parser, train=False)
    parser.add_argument(
        "--no-labels",
        action="store_true",
        help="score agreement with the unpatched model instead of labels: the percentage of rows given its "
        "class, or for a regression model the Pearson correlation x100 with its scores (the eval file needs "
        "no label column: unlabelled traffic suffices)",
    )
    goal = parser.add_argument_group("goal (one of)")
    goal.add_argument(
        "--max-drop",
        type=float,
        help="highest FLOP ratio whose metric is within this many points of the unpatched model (default: 1)",
    )
    goal.add_argument(
        "--target-speedup",
        type=float,
        help="instead: the most accurate configuration whose speed-up, measured on this machine, reaches this",
    )
    search = parser.add_argument_group("search")
    search.add_argument(
        "--holdout",
        type=float,
        default=0.5,
        help="fraction of the rows kept out of the search, to check the chosen configuration on (default: 0.5)",
    )
    search.add_argument("--max-evals", type=int, default=100, help="most configurations scored (default: 100)")
    search.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="eval batch; also the batch of the FLOP ratio and the timing (default: 64)",
    )
    search.add_argument("--seed", type=int, default=0, help="the split into search and held-out rows (default: 0)")
    search.add_argument("--bench-repeats", type=int, default=5, help="interleaved timing repeats (default: 5)")
    search.add_argument(
        "--no-speed", action="store_true", help="skip the timing (FLOP ratios only; not with --target-speedup)"
    )
    parser.add_argument(
        "--device", type=device_name, help="cpu, cuda or cuda:N to score and time on (default: the GPU if any)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_output_dir(path: str) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"--output-dir: {path} exists and is not an empty folder; give a new one")


def _load_rows(args: argparse.Namespace, config):
    """(texts, pairs, labels or None, metric name) from --eval-file or --glue-task."""
    from ..models.loading import is_regression
    from .config import resolve_metric
    from .data import LABEL_ID, load_glue, load_local, read_table

    regression = is_regression(config)
    metric = resolve_metric(args.metric, regression, args.glue_task)
    if args.glue_task is not None:
        if regression:
            raise ValueError(
                f"--glue-task: {args.glue_task} is a classification task but {args.model} is a regression model"
            )
        data = load_glue(args.glue_task, with_train=False)
        rows, text, pair = data.eval, data.text_column, data.text_pair_column
    elif args.no_labels:
        rows, text, pair = read_table(args.eval_file, "--eval-file"), args.text_column, args.text_pair_column
        for column, flag in ((text, "--text-column"), (pair, "--text-pair-column")):
            if column is not None and column not in rows[0]:
                raise ValueError(
                    f"--eval-file: {args.eval_file} has no column {column!r} ({flag}); columns: {sorted(rows[0])}"
                )
    else:
        data = load_local(
            args.eval_file,
            None,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            known_label2id=config.label2id,
            regression=regression,
        )
        if not regression and data.num_labels > config.num_labels:
            raise ValueError(
                f"--eval-file: the data has {data.num_labels} labels but the model only {config.num_labels}"
            )
        rows, text, pair = data.eval, data.text_column, data.text_pair_column
    texts = [str(r[text]) for r in rows]
    pairs = [str(r[pair]) for r in rows] if pair is not None else None
    labels = None if args.no_labels else [(float if regression else int)(r[LABEL_ID]) for r in rows]
    if regression and labels is not None and len(set(labels)) < 2:
        raise ValueError(
            f"--eval-file: every row has the same label ({labels[0]:g}); a correlation needs at least two values "
            "(or pass --no-labels to score agreement with the unpatched model)"
        )
    if not regression and labels is not None and len(set(labels)) < 2:
        raise ValueError(
            f"--eval-file: every row has the same label ({rows[0][LABEL_ID]}); the metric needs at least two "
            "classes (or pass --no-labels to score agreement with the unpatched model)"
        )
    return texts, pairs, labels, metric


def tune(args: argparse.Namespace) -> dict:
    """Check everything, run the search, write the output folder atomically; returns tune.json's content."""
    import shutil
    import tempfile

    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ..cli_args import resolve_device
    from ..models.architectures import registered_model_types
    from ..models.loading import is_regression
    from ..models.retention import CONFIG_KEY
    from .plots import plot_tune
    from .tune import MIN_ROWS, tune_retention

    if args.glue_task is None and args.eval_file is None:
        raise ValueError("data: give --eval-file or --glue-task")
    if args.glue_task is not None and args.eval_file is not None:
        raise ValueError("data: --glue-task and --eval-file are alternatives; give one")
    if args.max_drop is not None and args.target_speedup is not None:
        raise ValueError("--max-drop and --target-speedup are alternatives; give one")
    if args.max_drop is not None and not args.max_drop >= 0:
        raise ValueError(f"--max-drop must be >= 0 points, got {args.max_drop:g}")
    if args.target_speedup is not None and not args.target_speedup > 1:
        raise ValueError(
            f"--target-speedup must be > 1 (a speed-up over the unpatched model), got {args.target_speedup:g}"
        )
    if args.target_speedup is not None and args.no_speed:
        raise ValueError("--target-speedup is a measured speed-up; it cannot be combined with --no-speed")
    if args.no_labels and args.glue_task is not None:
        raise ValueError("--no-labels: only with --eval-file")
    _check_output_dir(args.output_dir)
    device = resolve_device(args.device)
    try:
        config = AutoConfig.from_pretrained(args.model)
    except Exception as e:
        raise ValueError(f"--model: cannot load a model configuration from {args.model!r} ({e})") from e
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(
            f"--model: {args.model} is not a sequence classifier (architectures: {architectures or 'none'}); "
            "tune a fine-tuned *ForSequenceClassification model"
        )
    if config.model_type not in registered_model_types():
        raise ValueError(
            f"--model: model type {config.model_type!r} cannot be patched; PoWER-BERT supports "
            f"{registered_model_types()}"
        )
    if config.num_labels < 2 and not is_regression(config):
        raise ValueError(f"--model: {args.model} has a single label and is no regression model; nothing to tune")
    texts, pairs, labels, metric = _load_rows(args, config)
    if len(texts) < MIN_ROWS:
        raise ValueError(f"--eval-file: {len(texts)} rows; at least {MIN_ROWS} are needed to choose a configuration")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).to(device)
    result = tune_retention(
        model,
        tokenizer,
        texts,
        labels,
        text_pairs=pairs,
        max_drop=1.0 if args.max_drop is None else args.max_drop,
        target_speedup=args.target_speedup,
        metric=metric,
        max_length=args.max_length,
        batch_size=args.batch_size,
        holdout=args.holdout,
        max_evals=args.max_evals,
        measure_speed=not args.no_speed,
        bench_repeats=args.bench_repeats,
        seed=args.seed,
        progress=not args.no_progress,
    )
    report = {"model": args.model, "data": args.eval_file or f"glue:{args.glue_task}", **result.to_dict()}

    # Everything goes to a sibling folder first and is renamed into place at the end: an interrupted or
    # failed run leaves no half-written output.
    parent = os.path.dirname(os.path.abspath(args.output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tune-", dir=parent)
    try:
        setattr(model.config, CONFIG_KEY, list(result.retention))
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        import json

        with open(os.path.join(staging, TUNE_FILE), "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        plot_tune(report, os.path.join(staging, PLOT_FILE))
        _check_output_dir(args.output_dir)
        if os.path.isdir(args.output_dir):
            os.rmdir(args.output_dir)
        os.rename(staging, args.output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def run(args: argparse.Namespace) -> int:
    from .cli_train import setup_logging

    setup_logging()
    report = tune(args)
    name = report["metric_name"]
    held = ""
    if report["holdout_metric"] is not None:
        held = (
            f"   held out ({report['num_holdout']} rows): {report['holdout_metric']:.2f} "
            f"(unpatched {report['reference_holdout']:.2f})"
        )
    speed = f"   measured speed-up {report['speedup']:.2f}x" if report["speedup"] is not None else ""
    print(
        f"{args.output_dir}: retention {report['retention']} ({report['evaluations']} configurations scored; "
        f"{report['stopped']})\n"
        f"{name}: search ({report['num_search']} rows) {report['search_metric']:.2f} "
        f"(unpatched {report['reference_search']:.2f}){held}\n"
        f"FLOP ratio {report['flop_ratio']:.2f}x (rows with dynamic padding: {report['flop_ratio_eval_set']:.2f}x)"
        f"{speed}"
    )
    return 0
