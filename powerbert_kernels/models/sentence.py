"""sentence-transformers: patch a ``SentenceTransformer``'s encoder and pool what it keeps.

A patched encoder returns only the vectors its last layer kept, with their own mask. The stock
``Pooling`` module would see a mask whose length no longer matches the token embeddings and fall back to
averaging everything, padding included. So the patched ``Transformer`` module replaces the features'
``attention_mask`` with the kept vectors' mask (and adds ``kept_indices``): CLS pooling then reads the
CLS vector (always kept, in slot 0), exactly as the stock model, and mean pooling averages the surviving
real tokens. Pooling modes whose result depends on the vectors that were removed (max, weighted mean,
last token, ...) are refused, as are modules this package does not know to be safe after pruning.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ._sink import call_collecting

SUPPORTED_POOLING = ("cls", "mean")
_SAFE_AFTER_POOLING = ("Dense", "Normalize")
# Pooling flags of sentence-transformers releases before pooling_mode became a string or tuple.
_LEGACY_POOLING_FLAGS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)


def is_sentence_transformer(model: object) -> bool:
    """Whether ``model`` is a ``sentence_transformers.SentenceTransformer`` (without importing the package)."""
    return any(
        cls.__name__ == "SentenceTransformer" and cls.__module__.startswith("sentence_transformers")
        for cls in type(model).__mro__
    )


def pooling_modes(pooling: nn.Module) -> tuple[str, ...]:
    """The modes a ``Pooling`` module concatenates, e.g. ``("mean",)``."""
    mode = getattr(pooling, "pooling_mode", None)
    if isinstance(mode, str):
        return (mode,)
    if isinstance(mode, (tuple, list)):
        return tuple(mode)
    return tuple(name for flag, name in _LEGACY_POOLING_FLAGS if getattr(pooling, flag, False))


def transformer_module(model: nn.Module) -> nn.Module:
    """The ``Transformer`` module of a ``SentenceTransformer``, once every later module is checked.

    Raises ``TypeError``/``ValueError`` naming the module that cannot follow a patched encoder.
    """
    modules = list(model.children())
    first = modules[0] if modules else None
    if first is None or type(first).__name__ != "Transformer" or not hasattr(first, "auto_model"):
        found = type(first).__name__ if first is not None else "no modules"
        raise TypeError(
            f"model: only a SentenceTransformer whose first module is a sentence_transformers Transformer "
            f"can be patched, got {found}"
        )
    for module in modules[1:]:
        name = type(module).__name__
        if name == "Pooling":
            modes = pooling_modes(module)
            unsupported = [m for m in modes if m not in SUPPORTED_POOLING]
            if not modes or unsupported:
                raise ValueError(
                    f"model: pooling mode {', '.join(unsupported) or 'none'} cannot follow a PoWER-BERT "
                    f"encoder (its result depends on removed vectors); supported: {', '.join(SUPPORTED_POOLING)}"
                )
            if getattr(module, "include_prompt", True) is False:
                raise ValueError(
                    "model: Pooling(include_prompt=False) cannot follow a PoWER-BERT encoder: the prompt's "
                    "positions move when vectors are removed"
                )
        elif name not in _SAFE_AFTER_POOLING:
            raise TypeError(
                f"model: a {name} module cannot follow a PoWER-BERT encoder; a patched SentenceTransformer "
                f"may have Pooling ({' or '.join(SUPPORTED_POOLING)}), {', '.join(_SAFE_AFTER_POOLING)}"
            )
    return first


def sentence_forward(transformer: nn.Module, previous: Any, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """The patched ``Transformer`` module's forward: the stock one, then the kept vectors' mask.

    Args:
        transformer: the ``Transformer`` module.
        previous: the forward it had as an instance attribute before patching, or ``None``.
        features: as the stock forward's; ``attention_mask`` (B, N).

    Returns:
        ``features`` with ``token_embeddings`` (B, l_L, D), ``attention_mask`` (B, l_L) (the kept
        vectors' mask, in the input mask's dtype) and ``kept_indices`` (B, l_L) int64.
    """
    forward = previous if previous is not None else functools.partial(type(transformer).forward, transformer)
    features, output = call_collecting(forward, features, **kwargs)
    if output is None:
        raise RuntimeError(
            "model: its Transformer module did not pass keyword arguments to the patched encoder, so the "
            "kept vectors' mask is unknown"
        )
    mask = features.get("attention_mask")
    dtype = mask.dtype if isinstance(mask, torch.Tensor) else torch.int64
    features["attention_mask"] = output.kept_attention_mask.to(dtype)
    features["kept_indices"] = output.kept_indices
    return features


def patch_transformer_module(transformer: nn.Module) -> None:
    """Make ``transformer``'s forward report the kept vectors' mask (picklable: a partial)."""
    transformer.forward = functools.partial(sentence_forward, transformer, transformer.__dict__.get("forward"))


def unpatch_transformer_module(transformer: nn.Module) -> None:
    """Undo :func:`patch_transformer_module`."""
    forward = transformer.__dict__.get("forward")
    if isinstance(forward, functools.partial) and forward.func is sentence_forward:
        previous = forward.args[1]
        if previous is None:
            del transformer.forward
        else:
            transformer.forward = previous
