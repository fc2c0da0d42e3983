"""``powerbert train``: learn a PoWER-BERT retention configuration for a classifier, end to end."""

from __future__ import annotations

import argparse

HELP = "fine-tune, learn the retention configuration and re-train a PoWER-BERT classifier"


def _lambdas(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_data_arguments(parser: argparse.ArgumentParser, *, train: bool) -> None:
    """The data options shared by ``train`` and ``eval``."""
    data = parser.add_argument_group("data (local files, or a GLUE task from the hub)")
    if train:
        data.add_argument("--train-file", help="training rows: .csv, .tsv (header row) or .json/.jsonl")
    data.add_argument("--eval-file", help="evaluation rows, same format")
    data.add_argument(
        "--glue-task",
        help="a GLUE classification task loaded with `datasets` instead "
        "(cola, sst2, mrpc, qqp, mnli, qnli, rte, wnli; needs network access)",
    )
    data.add_argument("--text-column", default="sentence", help="text column (default: sentence)")
    data.add_argument("--text-pair-column", help="second text column, for sentence-pair tasks")
    data.add_argument("--label-column", default="label", help="label column: ints or strings (default: label)")
    data.add_argument("--max-length", type=int, default=64, help="tokens per sequence, N (default: 64)")
    data.add_argument(
        "--metric",
        choices=["accuracy", "mcc", "f1"],
        help="the metric that decides (default: the GLUE task's, else accuracy); mcc = Matthews "
        "correlation (CoLA), f1 = F1 of class 1 (macro F1 for more classes)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="local model folder or hub id (a BERT; a pretrained "
        "encoder, or a fine-tuned classifier with --from-finetuned)",
    )
    parser.add_argument("--output-dir", required=True, help="where the final model, report.json and plots go")
    add_data_arguments(parser, train=True)
    train = parser.add_argument_group("training")
    train.add_argument(
        "--lambda",
        dest="lambdas",
        type=_lambdas,
        nargs="+",
        default=[1e-3],
        metavar="LAMBDA",
        help="retention penalty weight; several values run a trade-off sweep (default: 1e-3; "
        "paper: 1e-4 to 1e-3, up to 7e-3 for CoLA)",
    )
    train.add_argument("--lr", type=float, default=3e-5, help="model learning rate, every phase (default: 3e-5)")
    train.add_argument(
        "--soft-lr",
        type=float,
        help="learning rate of the soft-extract parameters r (default: 6 / search steps, so that r can cross "
        "[0, 1] within about a third of the search whatever the data size; paper: 1e-4 to 1e-2)",
    )
    train.add_argument("--epochs", type=float, default=3.0, help="epochs per phase (default: 3)")
    train.add_argument("--search-epochs", type=float, help="epochs of phase 2 (default: --epochs)")
    train.add_argument("--retrain-epochs", type=float, help="epochs of phase 3 (default: --epochs)")
    train.add_argument("--batch-size", type=int, default=32, help="training batch per device (default: 32)")
    train.add_argument(
        "--eval-batch-size",
        type=int,
        default=64,
        help="eval batch; also the batch the FLOP ratio and speed-up are measured at (default: 64)",
    )
    train.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default: 1)")
    train.add_argument("--weight-decay", type=float, default=0.01, help="model weight decay (default: 0.01)")
    train.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of each phase (default: 0.1)")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    train.add_argument(
        "--group-by-length",
        action="store_true",
        help="batch examples of similar length together: less padding, faster training",
    )
    start = parser.add_argument_group("starting point and resuming")
    start.add_argument(
        "--from-finetuned",
        action="store_true",
        help="--model is already fine-tuned on the task: skip phase 1 (it is the baseline)",
    )
    start.add_argument(
        "--from-searched",
        action="store_true",
        help="--model holds a search's weights and configuration: run only phase 3",
    )
    start.add_argument(
        "--retention",
        help="with --from-searched: the configuration (comma-separated counts) instead of the one in --model's config",
    )
    start.add_argument(
        "--baseline-model",
        help="with --from-finetuned/--from-searched: the model to score as the baseline (default: --model, unpatched)",
    )
    start.add_argument(
        "--resume",
        action="store_true",
        help="reuse complete phases in --output-dir and continue interrupted ones from their last checkpoint",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="with a sweep: ship the highest FLOP ratio within this many points of the baseline (default: 1)",
    )
    out.add_argument(
        "--eval-strategy",
        choices=["epoch", "no"],
        default="epoch",
        help="evaluate after every epoch (default) or only at the end of each phase",
    )
    out.add_argument(
        "--save-strategy",
        choices=["epoch", "no"],
        default="epoch",
        help="checkpoint every epoch (default; needed to --resume a phase) or never",
    )
    out.add_argument("--keep-checkpoints", action="store_true", help="keep each phase's last checkpoint")
    out.add_argument("--logging-steps", type=int, default=50)
    out.add_argument("--bench-repeats", type=int, default=10, help="interleaved timing repeats (default: 10)")
    out.add_argument("--report-to", default="none", help="Trainer integrations, e.g. tensorboard (default: none)")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace):
    """A :class:`~powerbert_kernels.training.pipeline.TrainConfig` from parsed arguments."""
    from ..models.retention import parse_retention
    from .pipeline import TrainConfig

    retention = None
    if args.retention is not None:
        retention = parse_retention(args.retention)
        if not all(isinstance(v, int) for v in retention):
            raise ValueError(f"--retention: give counts (ints), got {args.retention!r}")
    return TrainConfig(
        model=args.model,
        output_dir=args.output_dir,
        train_file=args.train_file,
        eval_file=args.eval_file,
        glue_task=args.glue_task,
        text_column=args.text_column,
        text_pair_column=args.text_pair_column,
        label_column=args.label_column,
        max_length=args.max_length,
        lambdas=tuple(args.lambdas),
        lr=args.lr,
        soft_lr=args.soft_lr,
        epochs=args.epochs,
        search_epochs=args.search_epochs,
        retrain_epochs=args.retrain_epochs,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        grad_accum=args.grad_accum,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        seed=args.seed,
        metric=args.metric,
        from_finetuned=args.from_finetuned,
        from_searched=args.from_searched,
        retention=retention,
        baseline_model=args.baseline_model,
        resume=args.resume,
        max_drop=args.max_drop,
        eval_strategy=args.eval_strategy,
        save_strategy=args.save_strategy,
        logging_steps=args.logging_steps,
        keep_checkpoints=args.keep_checkpoints,
        bf16=args.bf16,
        group_by_length=args.group_by_length,
        bench_repeats=args.bench_repeats,
        report_to=args.report_to,
        progress=not args.no_progress,
    )


def setup_logging() -> None:
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("powerbert_kernels").setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    import json

    from accelerate import PartialState

    from .pipeline import Pipeline

    setup_logging()
    try:
        pipeline = Pipeline(config_from_args(args))
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise SystemExit(f"powerbert train: error: {e}") from None
    report = pipeline.run()
    if PartialState().is_main_process:
        summary = {
            k: report[k]
            for k in (
                "metric_name",
                "baseline_metric",
                "power_metric",
                "retention",
                "flop_ratio",
                "speedup",
                "phase_seconds",
            )
        }
        print(json.dumps(summary, indent=2))
    return 0
