"""``powerbert train``: learn a PoWER-BERT retention configuration for a classifier, end to end.

The options are the fields of :class:`~powerbert_kernels.training.config.TrainConfig`.
"""

from __future__ import annotations

import argparse

HELP = "fine-tune, learn the retention configuration and re-train a PoWER-BERT classifier"


def add_data_arguments(parser: argparse.ArgumentParser, *, train: bool) -> None:
    """The data options (for ``train``, with ``--train-file``), for commands that share them."""
    from ..cli_args import add_dataclass_arguments
    from .config import GROUPS, TaskOptions, TrainConfig

    add_dataclass_arguments(parser, TrainConfig if train else TaskOptions, {"data": GROUPS["data"]}, only="data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli_args import add_dataclass_arguments
    from .config import GROUPS, TrainConfig

    add_dataclass_arguments(parser, TrainConfig, GROUPS)


def config_from_args(args: argparse.Namespace):
    """A :class:`~powerbert_kernels.training.config.TrainConfig` from parsed arguments."""
    from ..cli_args import dataclass_from_args
    from .config import TrainConfig

    cfg = dataclass_from_args(TrainConfig, args)
    cfg.lambdas = tuple(cfg.lambdas)
    return cfg


def setup_logging() -> None:
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("powerbert_kernels").setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    import json

    from .config import validate_config

    cfg = config_from_args(args)
    validate_config(cfg)  # before the training stack loads: a bad option answers at once

    from accelerate import PartialState

    from .pipeline import Pipeline

    setup_logging()
    report = Pipeline(cfg).run()
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
