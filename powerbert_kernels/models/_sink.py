"""How a patched encoder hands its output to the module that called it, per call.

A task head or a sentence-transformers module builds its own output from the encoder's and drops the
kept positions. It passes a fresh list under :data:`SINK_KWARG` down the keyword arguments it forwards
to the encoder, and the patched encoder appends its output there. Nothing is stored on a module, so
concurrent calls on one model each get their own, and ``torch.compile`` traces the hand-over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SINK_KWARG = "power_bert_outputs"


def call_collecting(forward: Callable[..., Any], /, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``forward(*args, **kwargs)`` with a fresh sink; returns its result and the encoder output it got.

    The encoder output is ``None`` when ``forward`` did not pass its keyword arguments to a patched
    encoder.
    """
    sink: list[Any] = []
    result = forward(*args, **kwargs, **{SINK_KWARG: sink})
    return result, (sink[-1] if sink else None)
