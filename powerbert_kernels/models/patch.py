"""Drop-in patching of Hugging Face BERT-family models with PoWER-BERT's word-vector elimination."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

from .. import ops
from . import sentence
from ._sink import SINK_KWARG, call_collecting
from .architectures import EncoderAdapter, adapter_for
from .extract import Extract, HardExtract
from .retention import CONFIG_EXCLUDE_SELF_KEY, CONFIG_KEY, Retention, layer_plan, validate_retention

_STATE = "_power_bert"


@dataclass
class PowerBertModelOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """The usual BERT output plus where the surviving vectors came from.

    ``last_hidden_state`` is (B, l_L, D): only the vectors kept by the last layer, in input order.

    Attributes:
        kept_indices: (B, l_L) int64, the input position of every vector of ``last_hidden_state``.
        kept_attention_mask: (B, l_L) bool, True where that vector is a real token (not padding).
        layer_kept_indices: one (B, l_j) int64 tensor per layer: input positions kept after layer j.
        layer_kept_attention_mask: one (B, l_j) bool tensor per layer: True where that slot holds a
            real token the row kept. Rows keep different numbers of vectors (fractions of their own
            lengths, or fewer real tokens than a count); a False slot is padding, whatever position
            ``layer_kept_indices`` names there.
    """

    kept_indices: torch.LongTensor | None = None
    kept_attention_mask: torch.BoolTensor | None = None
    layer_kept_indices: tuple[torch.LongTensor, ...] | None = None
    layer_kept_attention_mask: tuple[torch.BoolTensor, ...] | None = None


@dataclass
class _PatchState:
    """What a patch changed, kept on the bare encoder (plain data: it pickles and deep-copies with it)."""

    adapter: EncoderAdapter
    retention: list[int] | list[float] | None
    exclude_self: bool
    head: nn.Module | None = None
    sentence_module: nn.Module | None = None


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` (or the encoder inside it, or a SentenceTransformer's) is patched."""
    return _patched_base(model) is not None


def hf_model(model: nn.Module) -> nn.Module:
    # A SentenceTransformer's Hugging Face model sits in its Transformer module.
    if sentence.is_sentence_transformer(model):
        return sentence.transformer_module(model).auto_model
    return model


def _patched_base(model: nn.Module) -> nn.Module | None:
    if sentence.is_sentence_transformer(model):
        children = list(model.children())
        if not children or not hasattr(children[0], "auto_model"):
            return None
        model = children[0].auto_model
    if hasattr(model, _STATE):
        return model
    for child in model.children():
        if hasattr(child, _STATE):
            return child
    return None


def apply_power_bert(
    model: nn.Module,
    retention: Retention | None = None,
    *,
    exclude_self: bool | None = None,
    extracts: list[Extract] | None = None,
) -> nn.Module:
    """Patch a loaded BERT-family model in place so each encoder layer keeps only some word-vectors.

    The weights stay where they are; attention of layer j runs on the vectors it receives and returns
    their significance, the extract step keeps the CLS vector and the most significant others (in
    order), and the feed-forward block and every later layer run on the kept ones only.

    Args:
        model: a bare encoder (``BertModel``, ``AlbertModel``, ``ModernBertModel``, ...) or a task head
            that reads the CLS vector (sequence classification, multiple choice, next sentence
            prediction) of a registered architecture (:func:`registered_model_types`), or a
            ``sentence_transformers.SentenceTransformer`` with CLS or mean pooling (its pooling then
            reads the kept vectors and their mask).
        retention: one entry per encoder layer, non-increasing: ints (vectors kept, at most the
            model's maximum positions) or floats in (0, 1] (fractions of each row's own length); a
            list, tuple, 1-D numpy array or tensor, Python or numpy scalars. ``None`` takes the
            configuration stored in ``model.config`` (by an earlier patch, saved with
            ``save_pretrained``).
        exclude_self: leave a vector's attention to itself out of its significance (a bool); ``None``
            takes ``model.config``'s setting (default False).
        extracts: advanced: one :class:`Extract` module per layer instead of the hard extract built
            from ``retention`` (the configuration search uses soft-extract modules here).

    Returns:
        ``model``, patched. Its configuration is stored in ``model.config`` (``power_bert_retention``,
        ``power_bert_exclude_self``) so that ``save_pretrained`` followed by
        :func:`~powerbert_kernels.from_pretrained` restores it. The patched model pickles
        (``torch.save``, ``pickle``, ``copy.deepcopy``, multiprocessing) like the stock one.
    """
    if exclude_self is not None and not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be a bool (or None for the stored setting), got {exclude_self!r}")
    sentence_module = sentence.transformer_module(model) if sentence.is_sentence_transformer(model) else None
    target = hf_model(model)
    adapter = adapter_for(target)
    base = adapter.base_model(target)
    config = target.config
    num_layers = len(adapter.layers(base))
    if retention is None and extracts is None:
        retention = getattr(config, CONFIG_KEY, None)
        if retention is None:
            raise ValueError(
                "retention: none given and model.config has no stored PoWER-BERT configuration "
                f"({CONFIG_KEY}); pass one entry per encoder layer ({num_layers})"
            )
    # The per-batch keep plan comes from the configuration only when the extracts were built from it.
    planned = None
    if extracts is None:
        retention = planned = validate_retention(retention, num_layers, config.max_position_embeddings)
        extracts = [HardExtract(entry) for entry in retention]
    elif len(extracts) != num_layers:
        raise ValueError(f"extracts must have one module per encoder layer ({num_layers}), got {len(extracts)}")
    if exclude_self is None:
        exclude_self = bool(getattr(config, CONFIG_EXCLUDE_SELF_KEY, False))

    if hasattr(base, _STATE):
        remove_power_bert(model)
    if retention is not None:
        setattr(config, CONFIG_KEY, list(retention))
    setattr(config, CONFIG_EXCLUDE_SELF_KEY, exclude_self)

    base.power_extract = nn.ModuleList(extracts)
    # The patched forwards are partials of module-level functions: unlike bound methods they pickle
    # (by the function's qualified name) and deep-copy along with the module they belong to.
    head = None
    if target is not base:
        replacement = adapter.head_forward(target)
        if _passes_keywords(replacement or target.forward):
            head = target
            patched = functools.partial(_power_bert_head_forward, head, head.__dict__.get("forward"), replacement)
            # Callers that read the forward's parameters (Trainer keeps only the dataset columns the model
            # accepts) must see the stock ones, not (*args, **kwargs).
            patched.__signature__ = inspect.signature(head.forward)
            head.forward = patched
    if sentence_module is not None:
        sentence.patch_transformer_module(sentence_module)
    setattr(base, _STATE, _PatchState(adapter, planned, exclude_self, head, sentence_module))
    patched = functools.partial(_power_bert_forward, base)
    patched.__signature__ = inspect.signature(base.forward)
    base.forward = patched
    return model


def remove_power_bert(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_power_bert` in place.

    The model's modules, weights and forwards are the stock ones again, and ``model.config`` loses
    ``power_bert_retention`` and ``power_bert_exclude_self``: a model saved afterwards is a stock model.
    To keep a configuration for later, read it from the config before removing.
    """
    base = _patched_base(model)
    if base is None:
        raise ValueError("model: it is not patched with apply_power_bert")
    state: _PatchState = getattr(base, _STATE)
    if state.head is not None:
        previous = state.head.forward.args[1]
        if previous is None:
            del state.head.forward
        else:
            state.head.forward = previous
    if state.sentence_module is not None:
        sentence.unpatch_transformer_module(state.sentence_module)
    del base.forward
    del base.power_extract
    delattr(base, _STATE)
    for key in (CONFIG_KEY, CONFIG_EXCLUDE_SELF_KEY):
        if hasattr(base.config, key):
            delattr(base.config, key)
    return model


def _passes_keywords(forward) -> bool:
    # A head whose forward takes no **kwargs cannot pass the encoder's hand-over list down (heads of older
    # transformers releases); it then runs as it is, without kept_indices on its output.
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(forward).parameters.values())


def _power_bert_head_forward(head: nn.Module, previous, replacement, *args, **kwargs):
    """A patched task head's forward: its own one, with the encoder's ``kept_indices`` on its output.

    Task heads build their own output from the encoder's; carrying the kept positions over lets a caller
    map surviving vectors back to input tokens from any patched model. The encoder hands its output over
    through the call (see ``_sink``), so concurrent calls each get their own.

    Args:
        head: the task model.
        previous: the forward it had as an instance attribute before patching (restored on removal),
            or ``None``.
        replacement: the adapter's replacement forward for this head (:meth:`EncoderAdapter.head_forward`),
            or ``None`` to run the head's own.
    """
    if replacement is not None:
        forward = functools.partial(replacement, head)
    elif previous is not None:
        forward = previous
    else:
        forward = functools.partial(type(head).forward, head)
    output, encoder_output = call_collecting(forward, *args, **kwargs)
    if encoder_output is not None and hasattr(output, "keys"):
        object.__setattr__(output, "kept_indices", encoder_output.kept_indices)
    return output


def _key_padding_mask(
    attention_mask, batch: int, length: int, device: torch.device, want_lengths: bool
) -> tuple[torch.Tensor, bool, list[int] | None]:
    """The (B, N) bool mask, whether every token is real (then so is every kept vector), and each row's
    number of real tokens when ``want_lengths`` (fractions of a row's length need them on the host)."""
    if length == 0:
        raise ValueError("input_ids: every row needs at least one token, got sequence length 0")
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device), True, None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise ValueError(
            f"attention_mask must have shape (batch, seq_len) = ({batch}, {length}) with 1 for real tokens "
            f"and 0 for padding, got {shape}"
        )
    if tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask must have shape (batch, seq_len) = ({batch}, {length}), got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(device=device, dtype=torch.bool)
    # One host sync per eager forward. A row without any real token has no CLS vector to keep and no
    # defined significance, so it is refused here rather than producing NaNs deep in the encoder; a
    # batch without padding lets full-keep layers call SDPA without a mask (its fastest kernels), as the
    # stock model does; and fractions need every row's length. A compiled model skips the first two (a
    # data-dependent branch would break its graph) and reads lengths only for fractions.
    if torch.compiler.is_compiling():
        return mask, False, mask.sum(dim=1).tolist() if want_lengths else None
    facts = torch.stack([mask.any(dim=1).all(), mask.all()]).long()
    if want_lengths:
        facts = torch.cat([facts, mask.sum(dim=1)])
    facts = facts.tolist()
    if not facts[0]:
        raise ValueError("attention_mask: every row needs at least one real token (a 1)")
    return mask, bool(facts[1]), facts[2:] if want_lengths else None


def _attention_block(
    adapter,
    base,
    layer,
    hidden,
    mask,
    with_significance,
    exclude_self,
    plain,
    all_real,
    positions,
    position_ids,
    dropout_p,
):
    # A function of its own so that q, k, v and the attention output are freed before the feed-forward
    # block allocates its (B, n, 4D) intermediate: the peak memory then matches the stock layer's.
    q, k, v, scale = adapter.qkv(base, layer, hidden, position_ids)
    window = adapter.attention_window(layer)
    n = hidden.shape[1]
    # Before any extraction the positions are 0..n-1: a window of n-1 or more masks nothing.
    if window is not None and (positions is not None or window < n - 1):
        # Windowed layers (ModernBERT's local attention) train without attention dropout, their default.
        if positions is None:
            positions = torch.arange(n, device=hidden.device)[None]
        if with_significance:
            attn, significance = ops.local_attention_with_significance(
                q, k, v, mask, positions, window, scale=scale, exclude_self=exclude_self
            )
        else:
            attn = ops.local_attention(q, k, v, mask, positions, window, scale=scale, implementation=plain)
            significance = None
    elif with_significance:
        attn, significance = ops.attention_with_significance(
            q, k, v, mask, scale=scale, exclude_self=exclude_self, dropout_p=dropout_p
        )
    else:
        plain_mask = None if all_real else mask
        attn = ops.attention(q, k, v, plain_mask, scale=scale, implementation=plain, dropout_p=dropout_p)
        significance = None
    return adapter.attention_output(layer, attn, hidden), significance


def _layer(
    hidden,
    mask,
    positions,
    vector_ids,
    adapter,
    base,
    layer,
    extract,
    padded_length,
    exclude_self,
    plain,
    all_real,
    dropout_p,
    plan,
):
    """One patched encoder layer: attention (+ significance), extract, feed-forward on the kept vectors.

    ``plan`` is the layer's :class:`LayerKeep` for this batch (``None`` for extracts given directly)."""
    hidden_attn, significance = _attention_block(
        adapter,
        base,
        layer,
        hidden,
        mask,
        extract.needs_significance(hidden.shape[1], padded_length, plan),
        exclude_self,
        plain,
        all_real,
        positions,
        vector_ids,
        dropout_p,
    )
    hidden_attn, mask, kept = extract(hidden_attn, significance, mask, padded_length, plan)
    return adapter.feed_forward(layer, hidden_attn), mask, kept


def _attention_dropout(config) -> float:
    # BERT, RoBERTa and ELECTRA name it attention_probs_dropout_prob, DistilBERT attention_dropout.
    for name in ("attention_probs_dropout_prob", "attention_dropout"):
        value = getattr(config, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


_UNSUPPORTED_INPUTS = ("encoder_hidden_states", "encoder_attention_mask", "past_key_values", "head_mask")


def _power_bert_forward(
    self: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    output_attentions: bool | None = None,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
    **kwargs,
):
    """Patched encoder forward (bound to the bare encoder by :func:`apply_power_bert`).

    Inputs as the stock model's: ``input_ids`` or ``inputs_embeds`` (B, N[, D]), ``attention_mask``
    (B, N) with 1 for real tokens. Returns :class:`PowerBertModelOutput` (or its tuple); a batch of
    B = 0 rows gets outputs with B = 0. A list passed under ``SINK_KWARG`` (by a patched head) receives
    the output.
    """
    state: _PatchState = getattr(self, _STATE)
    adapter = state.adapter
    sink = kwargs.pop(SINK_KWARG, None)
    for name in _UNSUPPORTED_INPUTS:
        if kwargs.get(name) is not None:
            raise ValueError(f"{name} is not supported by a PoWER-BERT patched encoder")
    if output_attentions:
        raise ValueError(
            "output_attentions is not supported by a PoWER-BERT patched model: its attention never "
            "materialises the probability matrix"
        )
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    config = self.config
    if output_hidden_states is None:
        output_hidden_states = bool(getattr(config, "output_hidden_states", False))
    if return_dict is None:
        return_dict = bool(getattr(config, "return_dict", True))
    plain = "eager" if getattr(config, "_attn_implementation", None) == "eager" else "sdpa"

    hidden = adapter.embed(self, input_ids, token_type_ids, position_ids, inputs_embeds)
    B, N = hidden.shape[:2]
    retention = state.retention
    fractions = retention is not None and any(isinstance(entry, float) for entry in retention)
    mask, all_real, lengths = _key_padding_mask(attention_mask, B, N, hidden.device, fractions)
    # Every layer's keep counts for this batch, decided on the host once: per row for fractions.
    plans = [None] * len(self.power_extract) if retention is None else layer_plan(retention, N, lengths)
    # positions: the input position of every current vector (None while nothing was removed);
    # vector_ids: their position ids, which rotary models rotate by (the input's, gathered alike).
    positions = None
    vector_ids = position_ids if position_ids is not None else torch.arange(N, device=hidden.device)[None]
    layer_positions, layer_masks = [], []
    all_hidden = [hidden] if output_hidden_states else None
    # The stock layers' attention dropout, applied in training as theirs is (after the significance is read).
    dropout_p = _attention_dropout(config) if self.training else 0.0
    checkpointing = self.training and torch.is_grad_enabled()
    for layer, extract, plan in zip(adapter.layers(self), self.power_extract, plans, strict=True):
        args = (adapter, self, layer, extract, N, state.exclude_self, plain, all_real, dropout_p, plan)
        if checkpointing and getattr(layer, "gradient_checkpointing", False):
            # gradient_checkpointing_enable() marked the layer: run it through HF's checkpoint function, as
            # the stock layer would be; its activations are recomputed in the backward pass (the selection
            # too: the same inputs and RNG state give the same kept vectors).
            hidden, mask, kept = layer._gradient_checkpointing_func(_layer, hidden, mask, positions, vector_ids, *args)
        else:
            hidden, mask, kept = _layer(hidden, mask, positions, vector_ids, *args)
        if kept is not None:
            positions = kept if positions is None else positions.gather(1, kept)
            vector_ids = positions if position_ids is None else position_ids.expand(B, N).gather(1, positions)
        layer_positions.append(positions)
        layer_masks.append(mask)
        if output_hidden_states:
            all_hidden.append(hidden)
    hidden = adapter.encoder_output(self, hidden)

    all_positions = torch.arange(N, device=hidden.device).expand(B, N)
    layer_positions = tuple(all_positions if p is None else p for p in layer_positions)
    kept_indices = layer_positions[-1] if layer_positions else all_positions
    output = PowerBertModelOutput(
        last_hidden_state=hidden,
        pooler_output=adapter.pool(self, hidden),
        hidden_states=tuple(all_hidden) if output_hidden_states else None,
        kept_indices=kept_indices,
        kept_attention_mask=mask,
        layer_kept_indices=layer_positions,
        layer_kept_attention_mask=tuple(layer_masks),
    )
    if sink is not None:
        sink.append(output)
    return output if return_dict else output.to_tuple()
