"""The interface an architecture implements to be patched, and the registry of implementations."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ... import ops


def dropout_active(dropout: nn.Module) -> bool:
    """Whether a dropout module changes its input (training with p > 0): then the layers run their own
    modules, whose dropout sits between the dense layer and the residual."""
    return dropout.training and float(getattr(dropout, "p", 0.0)) > 0


def exact_gelu(activation: object) -> bool:
    """Whether an activation module is the exact (erf) GELU that :func:`ops.dense` fuses: transformers'
    ``GELUActivation`` on ``F.gelu`` or ``nn.GELU()``."""
    if isinstance(activation, nn.GELU):
        return activation.approximate == "none"
    return type(activation).__name__ == "GELUActivation" and getattr(activation, "act", None) is F.gelu


def dense_norm(linear: nn.Linear, hidden: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(linear(hidden) + residual)`` as one :func:`ops.dense` call, for a layer whose dropout is off."""
    if norm.weight is None or norm.bias is None:  # a LayerNorm without affine parameters: not fused
        return norm(linear(hidden) + residual)
    return ops.dense(
        hidden,
        linear.weight,
        linear.bias,
        residual=residual,
        norm_weight=norm.weight,
        norm_bias=norm.bias,
        eps=norm.eps,
    )


def dense_activation(linear: nn.Linear, hidden: torch.Tensor, activation: nn.Module) -> torch.Tensor:
    """``activation(linear(hidden))``, as one :func:`ops.dense` call when the activation is the exact GELU."""
    if exact_gelu(activation):
        return ops.dense(hidden, linear.weight, linear.bias, activation="gelu")
    return activation(ops.dense(hidden, linear.weight, linear.bias))


def qkv_projections(
    linears: Sequence[nn.Linear], hidden: torch.Tensor, heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The query, key and value linears applied to ``hidden`` (B, n, D) in one :func:`ops.dense_projections`
    call, each viewed as (B, n, heads, head_dim), and the score scale ``head_dim ** -0.5``."""
    B, n, _ = hidden.shape
    outputs = ops.dense_projections(hidden, [lin.weight for lin in linears], [lin.bias for lin in linears])
    q, k, v = (y.view(B, n, heads, head_dim) for y in outputs)
    return q, k, v, head_dim**-0.5


class EncoderAdapter:
    """How to run one BERT-family architecture piece by piece.

    The patched forward calls :meth:`embed`, then for every entry of :meth:`layers`: :meth:`qkv`, the
    attention op (global, or local when :meth:`attention_window` gives a window), :meth:`attention_output`,
    the extract step, :meth:`feed_forward`; then :meth:`encoder_output` and :meth:`pool`. Subclasses set
    the class names they accept and implement the methods with the model's own submodules, so patching
    keeps every weight in place.

    Every vector keeps its original input position through the extractions: the patched forward hands
    :meth:`qkv` the position ids of the vectors it receives (for rotary embeddings) and measures local
    attention windows in original positions.
    """

    model_types: tuple[str, ...] = ()
    """``config.model_type`` values this adapter serves."""
    base_classes: tuple[str, ...] = ()
    """Class names of the bare encoder models (e.g. ``BertModel``)."""
    cls_heads: tuple[str, ...] = ()
    """Class names of task models whose head reads only the CLS vector (the ones that can be patched)."""

    def check_config(self, config) -> None:
        """Raise ``ValueError`` for configurations the patched forward cannot reproduce exactly."""

    def base_model(self, model: nn.Module) -> nn.Module:
        """The bare encoder inside ``model`` (``model`` itself for a bare encoder): HF's ``base_model``,
        which follows ``base_model_prefix``."""
        return model.base_model

    def embed(self, base: nn.Module, input_ids, token_type_ids, position_ids, inputs_embeds) -> torch.Tensor:
        """Embeddings: (B, N, D)."""
        raise NotImplementedError

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        """The encoder layers in order, one per retention entry (a shared layer may appear several times)."""
        raise NotImplementedError

    def qkv(
        self, base: nn.Module, layer: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Project ``hidden`` (B, n, D) to q, k, v, each (B, n, H, d), and return the score scale.

        ``position_ids`` (B, n) or (1, n) int64 are the position ids of those n vectors (the input's,
        gathered with the vectors at every extraction): a rotary model rotates q and k by them, a model
        with absolute position embeddings ignores them.
        """
        raise NotImplementedError

    def attention_window(self, layer: nn.Module) -> int | None:
        """For a local-attention layer, the largest distance (in original input positions) between a
        query and a key it attends to; ``None`` for global attention (the default)."""
        return None

    def attention_output(self, layer: nn.Module, attn: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Output projection, dropout, residual and LayerNorm of the attention block: (B, n, D)."""
        raise NotImplementedError

    def feed_forward(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The layer's feed-forward block with its residual and LayerNorm: (B, n, D)."""
        raise NotImplementedError

    def encoder_output(self, base: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """What the encoder applies after its last layer (e.g. a final LayerNorm): (B, l_L, D)."""
        return hidden

    def head_forward(self, model: nn.Module) -> Callable[..., object] | None:
        """A replacement ``forward`` for a task head whose own one cannot read a pruned encoder output
        (e.g. mean pooling with the input's attention mask), bound to ``model`` while it is patched;
        ``None`` (the default) keeps the head's own."""
        return None

    def pool(self, base: nn.Module, hidden: torch.Tensor) -> torch.Tensor | None:
        """The pooler output from the CLS vector ``hidden[:, 0]``, or None if the model has no pooler."""
        return None

    def encoder_extra_flops(self, base: nn.Module, batch: int, seq_len: int) -> int:
        """Matrix FLOPs the encoder spends outside its layers and pooler (e.g. an embedding projection)."""
        return 0

    def dims(self, config) -> dict[str, int]:
        """What the FLOP count needs: ``hidden`` D, ``heads`` H, ``layers`` (entries of :meth:`layers`)
        and ``ffn_weights``, the multiply-adds per vector of one feed-forward block (``2 * D *
        intermediate`` for BERT's two matrices)."""
        return {
            "hidden": config.hidden_size,
            "heads": config.num_attention_heads,
            "layers": config.num_hidden_layers,
            "ffn_weights": 2 * config.hidden_size * config.intermediate_size,
        }


_ADAPTERS: dict[str, EncoderAdapter] = {}


def register_adapter(adapter: EncoderAdapter) -> EncoderAdapter:
    """Make ``adapter`` serve every model type it lists."""
    for model_type in adapter.model_types:
        _ADAPTERS[model_type] = adapter
    return adapter


def registered_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_for(model: nn.Module) -> EncoderAdapter:
    """The adapter for ``model``, or a ``TypeError`` that says which models can be patched."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    adapter = _ADAPTERS.get(model_type)
    name = type(model).__name__
    if adapter is None:
        raise TypeError(
            f"model: unsupported model type {model_type!r} ({name}); PoWER-BERT patching supports "
            f"{registered_model_types()}"
        )
    accepted = adapter.base_classes + adapter.cls_heads
    if name not in accepted:
        raise TypeError(
            f"model: {name} is not supported: PoWER-BERT removes word-vectors, so only a bare encoder "
            f"or a head that reads the CLS vector can be patched ({', '.join(accepted)})"
        )
    adapter.check_config(config)
    return adapter
