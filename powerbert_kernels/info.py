"""``powerbert info``: versions, devices and which op backends are available here (and why not)."""

from __future__ import annotations

import argparse

HELP = "print versions, devices and the available op backends"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .benchmarking import environment
    from .ext import build_info
    from .ops import backend_report

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    print(
        f"powerbert_kernels {__version__}; torch {env['torch']}, transformers {env['transformers']}, "
        f"triton {env['triton']}, python {env['python']}"
    )
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        print(f"device: {env['device_name']} (compute capability {major}.{minor}, CUDA {env['cuda']})")
    else:
        print(f"device: CPU ({env['device_name']}, {env['cpu_threads']} threads); no CUDA device")
    print(backend_report())
    info = build_info()
    if info["loaded"] and not info["cuda"] and device.type == "cuda":
        print("note: the extension has no CUDA kernels; rebuild with POWERBERT_CUDA=1 (see docs/ext.md)")
    return 0
