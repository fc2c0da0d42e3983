"""``powerbert info``: versions, the device, and for each op backend whether it is installed and whether
it is usable on this machine (and why not).

"Installed" is about the software: the ``triton`` package, the compiled extension. "Usable here" is
tested, not guessed: both ops are run once on a tiny input with the backend forced, on the device the
library would use; a backend that is installed but cannot run here (Triton without a GPU) says why.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HELP = "print versions, the device, and which op backends are installed and usable here"

TRITON_HINT = (
    "CUDA builds of PyTorch on Linux bring Triton with them; otherwise `pip install 'powerbert-kernels[triton]'`"
)


@dataclass
class BackendStatus:
    """One backend on this machine."""

    name: str
    installed: bool
    installed_detail: str
    usable: bool
    usable_detail: str


def _probe(backend: str, device: torch.device) -> str | None:
    """Run both ops once with ``backend`` forced on a tiny input; None when it ran, else the first error line."""
    import torch

    from . import ops

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 2, 8, generator=g).to(device) for _ in range(3))
    mask = torch.ones(1, 4, dtype=torch.bool, device=device)
    try:
        _, significance = ops.attention_with_significance(q, k, v, mask, backend=backend)
        ops.select_gather(torch.randn(1, 4, 8, generator=g).to(device), significance, mask, 2, backend=backend)
    except Exception as e:  # every failure of a forced backend is the answer to "usable here?"
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def backend_status(device: torch.device) -> list[BackendStatus]:
    """Installed and usable, for the ``torch``, ``triton`` and ``ext`` backends on ``device``."""
    import torch

    from .ext import build_info

    out = [BackendStatus("torch", True, f"PyTorch {torch.__version__}", True, "reference ops, every device")]

    triton_version = _version("triton") if importlib.util.find_spec("triton") is not None else None
    if triton_version is None:
        out.append(BackendStatus("triton", False, f"no `triton` package ({TRITON_HINT})", False, "not installed"))
    else:
        reason = _probe("triton", device)
        usable_detail = f"on {device}" if reason is None else reason
        out.append(BackendStatus("triton", True, f"triton {triton_version}", reason is None, usable_detail))

    info = build_info()
    if not info["loaded"]:
        out.append(BackendStatus("ext", False, str(info["error"]), False, "not installed"))
    else:
        kernels = "C++ CPU kernels" + (
            f", CUDA kernels for {info['cuda_archs']}" if info["cuda"] else ", no CUDA kernels"
        )
        reason = _probe("ext", device)
        usable_detail = f"on {device}" if reason is None else reason
        out.append(BackendStatus("ext", True, kernels, reason is None, usable_detail))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_args import device_name

    parser.add_argument(
        "--device",
        type=device_name,
        help="the device to test the backends on (default: cuda when a GPU is present, else cpu)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .benchmarking import environment
    from .cli_args import resolve_device
    from .ext import build_info

    device = resolve_device(args.device)
    env = environment(device)
    print(
        f"powerbert_kernels {__version__}; torch {env['torch']}, transformers {env['transformers']}, "
        f"triton {env['triton'] or 'not installed'}, python {env['python']}"
    )
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        print(f"device: {env['device_name']} (compute capability {major}.{minor}, CUDA {env['cuda']})")
    else:
        print(f"device: CPU ({env['device_name']}, {env['cpu_threads']} threads); no CUDA device in use")
    statuses = backend_status(device)
    for s in statuses:
        installed = ("yes, " if s.installed else "no: ") + s.installed_detail
        usable = ("yes, " if s.usable else "no: ") + s.usable_detail
        print(f"{s.name}:\n  installed: {installed}\n  usable here: {usable}")
    info = build_info()
    if info["loaded"] and not info["cuda"] and device.type == "cuda":
        print("note: the extension has no CUDA kernels; rebuild with POWERBERT_CUDA=1 (see docs/ext.md)")
    if not any(s.name == "triton" and s.installed for s in statuses):
        print(f"note: Triton kernels (GPU) need the `triton` package: {TRITON_HINT}")
    return 0
