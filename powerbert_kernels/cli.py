"""The ``powerbert`` command: demo, bench, train, eval, tune, check-cuda, info.

Each subcommand lives in its own module, which provides ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; heavy imports happen inside ``run`` so that ``powerbert --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "demo": "powerbert_kernels.demo",
    "bench": "powerbert_kernels.benchmarking",
    "check-cuda": "powerbert_kernels.ext.check_cuda",
    "train": "powerbert_kernels.training.cli_train",
    "eval": "powerbert_kernels.training.cli_eval",
    "tune": "powerbert_kernels.training.cli_tune",
    "info": "powerbert_kernels.info",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powerbert",
        description="PoWER-BERT: progressive word-vector elimination for fast BERT-family inference.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
