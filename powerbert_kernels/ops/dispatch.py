"""Backends of the PoWER-BERT ops, and the per-call choice between them.

Every op has up to three implementations:

- ``triton``: fused Triton kernels, on CUDA devices Triton supports (:mod:`powerbert_kernels.triton.backend`);
- ``ext``: the compiled C++/CUDA extension, on the CPU and on CUDA devices it was built for, including
  those Triton cannot serve (:mod:`powerbert_kernels.ext.backend`);
- ``torch``: the pure-PyTorch reference, everywhere (:mod:`powerbert_kernels.ops.torch_backend`).

Each implementation is an :class:`OpBackend` subclass that states what it supports as class attributes
(devices, dtypes, largest head dimension, minimum compute capability, whether it runs only when forced)
and extends :meth:`OpBackend.not_supported_reasons` with ``super()`` for anything else, as xformers'
attention operators do. The facts of a call are a typed :class:`OpInputs` (:class:`AttentionInputs`,
:class:`SelectGatherInputs`). A forced backend that cannot run a call raises one error listing every
reason and the inputs; automatic selection takes the first backend of :data:`BACKENDS` with no reason.

Backend modules are named in :data:`BACKEND_MODULES` and imported on first use, after the ops package
has finished loading: importing the ops never imports Triton or the compiled extension, and a backend
whose import fails is recorded with the reason (see :func:`missing_reason`). The choice is made per
call, in Python, before the custom op is entered: the backend name is an argument of the op, so
``torch.compile`` specialises on it and sees no graph break.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ._checks import FLOAT_DTYPES

ENV_VAR = "POWERBERT_BACKEND"
BACKENDS: tuple[str, ...] = ("triton", "ext", "torch")
"""All backend names, in the order automatic selection tries them."""

BACKEND_MODULES: dict[str, str] = {
    "triton": "powerbert_kernels.triton.backend",
    "ext": "powerbert_kernels.ext.backend",
    "torch": "powerbert_kernels.ops.torch_backend",
}
"""The module of each backend. Each defines ``IMPLEMENTATIONS``, its :class:`OpBackend` subclasses, and
raises on import when the backend cannot be used here (the message becomes :func:`missing_reason`)."""

OPS: tuple[str, ...] = ("attention_with_significance", "select_gather")
"""The dispatched ops (each a custom op ``powerbert::<name>``), which every backend implements."""

OPTIONAL_OPS: tuple[str, ...] = ("dense",)
"""Fusions some backends implement (see :func:`resolve_optional`); the torch backend's is the reference."""


class BackendUnavailableError(RuntimeError):
    """A backend that was asked for (argument or ``POWERBERT_BACKEND``) cannot run this call."""


@dataclass(frozen=True)
class OpInputs:
    """What every backend needs to know of a call: where and in which dtype its main input is."""

    device: torch.device
    dtype: torch.dtype

    def describe(self) -> str:
        """The inputs in words, for error messages."""
        return f"{str(self.dtype).removeprefix('torch.')} on {self.device}"


@dataclass(frozen=True)
class AttentionInputs(OpInputs):
    """A call of ``attention_with_significance``: q, k, v of shape (B, N, H, d)."""

    batch: int
    seq_len: int
    heads: int
    head_dim: int

    def describe(self) -> str:
        shape = (self.batch, self.seq_len, self.heads, self.head_dim)
        return f"q, k, v (B, N, H, d) = {shape} {super().describe()}"


@dataclass(frozen=True)
class SelectGatherInputs(OpInputs):
    """A call of ``select_gather``: hidden of shape (B, N, D), ``keep`` vectors kept per row."""

    batch: int
    seq_len: int
    hidden_size: int
    keep: int

    def describe(self) -> str:
        shape = (self.batch, self.seq_len, self.hidden_size)
        return f"hidden (B, N, D) = {shape} {super().describe()}, keep={self.keep}"


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


class OpBackend:
    """One backend's implementation of one op, with what it supports.

    Subclasses set :attr:`op` and :attr:`name`, implement :meth:`apply` and override the attributes;
    conditions the attributes cannot state go into an override of :meth:`not_supported_reasons` (or
    :meth:`forced_only_reasons`) that extends ``super()``'s list.
    """

    op: ClassVar[str]
    """The op implemented, one of :data:`OPS`."""
    name: ClassVar[str]
    """The backend, one of :data:`BACKENDS`."""
    devices: ClassVar[frozenset[str] | None] = frozenset({"cpu", "cuda"})
    """Device types it runs on (None: every one)."""
    dtypes: ClassVar[tuple[torch.dtype, ...]] = FLOAT_DTYPES
    """Input dtypes it takes."""
    max_head_dim: ClassVar[int | None] = None
    """Largest attention head dimension (None: no limit)."""
    max_seq_len: ClassVar[int | None] = None
    """Longest sequence (None: no limit)."""
    min_compute_capability: ClassVar[tuple[int, int] | None] = None
    """Oldest CUDA compute capability it runs on (None: every one)."""
    capability_note: ClassVar[str] = ""
    """Why :attr:`min_compute_capability` is what it is, appended to the reason."""
    forced_only: ClassVar[bool] = False
    """Run only when asked for by name, never picked automatically."""
    forced_only_reason: ClassVar[str] = "it runs only when forced"

    @staticmethod
    def apply(*args: object) -> object:
        """Run the op on already checked arguments (those of the custom op, without ``backend``)."""
        raise NotImplementedError

    @classmethod
    def not_supported_reasons(cls, inputs: OpInputs) -> list[str]:
        """Every reason this implementation cannot run a call (empty: it can)."""
        reasons = []
        device = inputs.device
        if cls.devices is not None and device.type not in cls.devices:
            reasons.append(f"device type {device.type!r} is not supported (only {', '.join(sorted(cls.devices))})")
        if inputs.dtype not in cls.dtypes:
            reasons.append(
                f"dtype {str(inputs.dtype).removeprefix('torch.')} is not supported (only {_dtype_names(cls.dtypes)})"
            )
        if (
            cls.min_compute_capability is not None
            and device.type == "cuda"
            and torch.version.hip is None
            and torch.cuda.is_available()
        ):
            cap = compute_capability(device)
            floor = cls.min_compute_capability
            if cap < floor:
                note = f", {cls.capability_note}" if cls.capability_note else ""
                reasons.append(f"compute capability {cap[0]}.{cap[1]} is below {floor[0]}.{floor[1]}{note}")
        head_dim = getattr(inputs, "head_dim", None)
        if cls.max_head_dim is not None and head_dim is not None and head_dim > cls.max_head_dim:
            reasons.append(f"head dim {head_dim} is larger than {cls.max_head_dim}")
        seq_len = getattr(inputs, "seq_len", None)
        if cls.max_seq_len is not None and seq_len is not None and seq_len > cls.max_seq_len:
            reasons.append(f"sequence length {seq_len} is longer than {cls.max_seq_len}")
        return reasons

    @classmethod
    def forced_only_reasons(cls, inputs: OpInputs) -> list[str]:
        """Reasons to run a call it supports only when forced (empty: automatic selection may pick it)."""
        return [cls.forced_only_reason] if cls.forced_only else []


def compute_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device (the current one when it has no index)."""
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    # Asked on every dispatch to a GPU: once per device is enough.
    return torch.cuda.get_device_capability(index)


_REGISTRY: dict[str, dict[str, type[OpBackend]]] = {}
_MISSING: dict[str, str] = {}
_LOADED = False


def compile_time_constant(fn: Callable[[], bool]) -> Callable[[], bool]:
    """Mark a side-effecting loader as ``torch.compiler.assume_constant_result`` does: ``torch.compile``
    runs it once while tracing and keeps its result, instead of tracing the imports inside it.

    Sets the decorator's marker itself, because ``torch.compiler.assume_constant_result`` imports
    ``torch._dynamo`` and with it Triton, which importing the package must not do.
    """
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@compile_time_constant
def load_backends() -> bool:
    """Import every backend module once (the first dispatch does it); True when done.

    Backends import the ops package (its references, its checks), so they are imported here, never while
    the ops package itself is loading. Under ``torch.compile`` this runs at trace time, as a constant.
    """
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for backend in BACKENDS:
            try:
                module = importlib.import_module(BACKEND_MODULES[backend])
            except ImportError as exc:  # not installed, not built, or built for another PyTorch
                _MISSING[backend] = str(exc)
                continue
            except Exception as exc:  # a package that is installed but fails on import (a broken Triton)
                _MISSING[backend] = f"{type(exc).__name__}: {exc}"
                continue
            for impl in module.IMPLEMENTATIONS:
                _REGISTRY.setdefault(impl.op, {})[impl.name] = impl
    return True


def missing_reason(backend: str) -> str | None:
    """Why ``backend`` could not be loaded here (None when it loaded)."""
    _check_name("backend", backend)
    load_backends()
    return _MISSING.get(backend)


def implementations(op: str) -> dict[str, type[OpBackend]]:
    """The loaded implementations of ``op`` by backend name, in dispatch order."""
    load_backends()
    registry = _REGISTRY.get(op, {})
    return {name: registry[name] for name in BACKENDS if name in registry}


def available_backends() -> list[str]:
    """The backends loaded here that implement every op, in dispatch order (e.g. ``['ext', 'torch']``).

    A listed backend may still decline some calls (a device or dtype it does not serve); see
    :func:`backend_report` and :func:`explain`.
    """
    return [name for name in BACKENDS if all(name in implementations(op) for op in OPS)]


def backend_report() -> str:
    """One line per backend: whether it is available here and, if not, why."""
    available = available_backends()
    lines = []
    for name in BACKENDS:
        if name in available:
            detail = getattr(importlib.import_module(BACKEND_MODULES[name]), "DETAIL", "")
            lines.append(f"{name}: available" + (f" ({detail})" if detail else ""))
        else:
            reason = missing_reason(name) or "it does not implement every op"
            lines.append(f"{name}: unavailable: {reason}")
    return "\n".join(lines)


def _check_name(source: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or 'auto', got {backend!r}")


def requested_backend(backend: str | None) -> str | None:
    """The backend asked for by the argument, else by ``POWERBERT_BACKEND``, else ``None`` (automatic)."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        source = ENV_VAR
    if backend is None or backend == "auto":
        return None
    _check_name(source, backend)
    return backend


def _reasons(op: str, backend: str, inputs: OpInputs, automatic: bool) -> list[str]:
    impl = implementations(op).get(backend)
    if impl is None:
        why = missing_reason(backend)
        return [f"it is not available here: {why}" if why else f"it has no implementation of {op}"]
    reasons = impl.not_supported_reasons(inputs)
    if automatic and not reasons:
        reasons = impl.forced_only_reasons(inputs)
    return reasons


def resolve(op: str, inputs: OpInputs, backend: str | None = None) -> str:
    """Pick the backend that runs ``op`` for a call described by ``inputs``.

    A forced backend (argument, or ``POWERBERT_BACKEND``) that cannot run the call raises
    :class:`BackendUnavailableError` naming every reason and the inputs. Otherwise the first of
    :data:`BACKENDS` that can run it is returned.
    """
    forced = requested_backend(backend)
    if forced is not None:
        reasons = _reasons(op, forced, inputs, automatic=False)
        if reasons:
            raise BackendUnavailableError(
                f"backend {forced!r} cannot run {op} for {inputs.describe()}: " + "; ".join(reasons)
            )
        return forced
    skipped = []
    for name in BACKENDS:
        reasons = _reasons(op, name, inputs, automatic=True)
        if not reasons:
            return name
        skipped.append(f"{name}: " + "; ".join(reasons))
    raise BackendUnavailableError(f"no backend can run {op} for {inputs.describe()}: " + " | ".join(skipped))


def resolve_optional(op: str, inputs: OpInputs, backend: str | None = None) -> str:
    """Pick the backend that runs an optional fusion (one of :data:`OPTIONAL_OPS`).

    As :func:`resolve`, except that a forced backend that cannot run the call (one without the fusion,
    or one that declines these inputs) gives ``"torch"``, the reference composition, instead of an
    error: a fusion is an optimisation with the reference's semantics, and forcing a backend for the
    main ops must not break the layers around them.
    """
    forced = requested_backend(backend)
    if forced is not None and not _reasons(op, forced, inputs, automatic=False):
        return forced
    if forced is None:
        for name in BACKENDS:
            if not _reasons(op, name, inputs, automatic=True):
                return name
    return "torch"


def implementation(op: str, backend: str) -> Callable[..., object]:
    """The function that runs ``op`` under ``backend`` (raises if there is none)."""
    impl = implementations(op).get(backend)
    if impl is None:
        why = missing_reason(backend) or f"it has no implementation of {op}"
        raise BackendUnavailableError(f"backend {backend!r} cannot run {op}: {why}")
    return impl.apply


def explain(op: str, inputs: OpInputs) -> dict[str, list[str]]:
    """For each backend, why automatic selection would not pick it for ``op`` and ``inputs`` (empty: it would)."""
    return {name: _reasons(op, name, inputs, automatic=True) for name in BACKENDS}


def registered_backends(op: str) -> list[str]:
    """The backends loaded here that implement ``op``, in dispatch order."""
    return list(implementations(op))
