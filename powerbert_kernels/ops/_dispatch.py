"""Backend registry and per-call dispatch for the PoWER-BERT ops.

Every op has up to three implementations:

- ``triton``: fused Triton kernels, on CUDA devices Triton supports;
- ``ext``: the compiled C++/CUDA extension (``powerbert_kernels._C``), on the CPU and on CUDA devices
  it was built for, including those Triton cannot serve;
- ``torch``: the pure-PyTorch reference, everywhere.

Each backend states, for a given call, every reason it cannot run it (xformers-style), so a forced
backend that cannot run raises one error listing all of them, and automatic selection can say why each
faster backend was skipped. The choice is made per call, in Python, before the custom op is entered: the
backend name is an argument of the op, so ``torch.compile`` specialises on it and sees no graph break.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

ENV_VAR = "POWERBERT_BACKEND"
BACKENDS: tuple[str, ...] = ("triton", "ext", "torch")
"""All backend names, in the order automatic selection tries them."""


class BackendUnavailableError(RuntimeError):
    """A backend that was asked for (argument or ``POWERBERT_BACKEND``) cannot run this call."""


@dataclass(frozen=True)
class CallFacts:
    """What a backend needs to know to decide whether it can run a call.

    ``device`` and ``dtype`` describe the main input; ``extra`` holds op-specific facts (the head
    dimension of an attention call, for instance).
    """

    device: torch.device
    dtype: torch.dtype
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    ``fn`` takes the op's arguments (without ``backend``); ``unsupported`` returns the reasons it cannot
    run a call described by :class:`CallFacts` (an empty list means it can); ``not_automatic`` returns
    reasons it should run such a call only when forced (Triton's CPU interpreter: exact, but far too
    slow to be picked on its own).
    """

    fn: Callable[..., object]
    unsupported: Callable[[CallFacts], list[str]]
    not_automatic: Callable[[CallFacts], list[str]]


_REGISTRY: dict[str, dict[str, Implementation]] = {}
_MISSING_REASON: dict[str, str] = {
    "triton": "no Triton implementation is registered (is the `triton` package installed?)",
    "ext": "the compiled extension powerbert_kernels._C is not built or failed to load",
    "torch": "no reference implementation is registered",
}


def _nothing(facts: CallFacts) -> list[str]:
    return []


def register(
    op: str,
    backend: str,
    fn: Callable[..., object],
    unsupported: Callable[[CallFacts], list[str]] | None = None,
    not_automatic: Callable[[CallFacts], list[str]] | None = None,
) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op`` (replacing an earlier one)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = Implementation(fn, unsupported or _nothing, not_automatic or _nothing)


def set_missing_reason(backend: str, reason: str) -> None:
    """Say why ``backend`` registered nothing (an import error, say), for the dispatch errors."""
    _MISSING_REASON[backend] = reason


def _reasons(op: str, backend: str, facts: CallFacts, automatic: bool = False) -> list[str]:
    impl = _REGISTRY.get(op, {}).get(backend)
    if impl is None:
        return [_MISSING_REASON[backend]]
    reasons = impl.unsupported(facts)
    if automatic and not reasons:
        reasons = impl.not_automatic(facts)
    return reasons


def requested_backend(backend: str | None) -> str | None:
    """The backend asked for by the argument, else by ``POWERBERT_BACKEND``, else ``None`` (automatic)."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        source = ENV_VAR
    if backend is None or backend == "auto":
        return None
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or 'auto', got {backend!r}")
    return backend


def resolve(op: str, facts: CallFacts, backend: str | None = None) -> str:
    """Pick the backend that runs ``op`` for a call described by ``facts``.

    A forced backend (argument, or ``POWERBERT_BACKEND``) that cannot run the call raises
    :class:`BackendUnavailableError` naming every reason. Otherwise the first of :data:`BACKENDS` that
    can run it is returned.
    """
    forced = requested_backend(backend)
    if forced is not None:
        reasons = _reasons(op, forced, facts)
        if reasons:
            raise BackendUnavailableError(
                f"backend {forced!r} cannot run {op} on {facts.device} with {facts.dtype}: " + "; ".join(reasons)
            )
        return forced
    skipped = []
    for name in BACKENDS:
        reasons = _reasons(op, name, facts, automatic=True)
        if not reasons:
            return name
        skipped.append(f"{name}: " + "; ".join(reasons))
    raise BackendUnavailableError(f"no backend can run {op}: " + " | ".join(skipped))


def implementation(op: str, backend: str) -> Callable[..., object]:
    """The function registered for ``op`` under ``backend`` (raises if there is none)."""
    impl = _REGISTRY.get(op, {}).get(backend)
    if impl is None:
        raise BackendUnavailableError(f"backend {backend!r} has no implementation of {op}: " + _MISSING_REASON[backend])
    return impl.fn


def explain(op: str, facts: CallFacts) -> dict[str, list[str]]:
    """For each backend, why automatic selection would not pick it for ``op`` and ``facts`` (empty: it would)."""
    return {name: _reasons(op, name, facts, automatic=True) for name in BACKENDS}


def registered_backends(op: str) -> list[str]:
    """The backends that registered an implementation of ``op``, in dispatch order."""
    return [name for name in BACKENDS if name in _REGISTRY.get(op, {})]
