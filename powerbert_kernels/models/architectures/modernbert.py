"""ModernBERT: pre-norm layers, rotary positions, alternating local and global attention, GLU feed-forward.

Every kept vector keeps its original position: q and k are rotated by the position ids gathered with the
vectors, and a local layer's window (``config.sliding_window`` = ``local_attention // 2`` positions either
side) is measured between original positions, so a vector sees exactly the kept vectors the stock model
would let it see. Local layers run :func:`~powerbert_kernels.ops.local_attention_with_significance`,
which exists only in pure PyTorch; global layers use the accelerated attention ops.

``ModernBertForSequenceClassification`` pools with ``config.classifier_pooling``: ``"cls"`` reads the
first kept vector (the CLS token, exactly as the stock head); ``"mean"`` averages the vectors that
survive the last layer and are real tokens (the stock head averages all real tokens, so the two agree
only at full retention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import EncoderAdapter, register_adapter

_ATTENTION = ("eager", "sdpa", None)


class ModernBertAdapter(EncoderAdapter):
    model_types = ("modernbert",)
    base_classes = ("ModernBertModel",)
    cls_heads = ("ModernBertForSequenceClassification",)

    def check_config(self, config) -> None:
        implementation = getattr(config, "_attn_implementation", None)
        if implementation not in _ATTENTION:
            raise ValueError(
                f"model: ModernBERT with attn_implementation={implementation!r} cannot be patched: PoWER-BERT "
                "runs its own attention ops on padded batches; load the model with attn_implementation='sdpa' "
                "(or 'eager')"
            )
        pooling = getattr(config, "classifier_pooling", "cls")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model: classifier_pooling={pooling!r} is not supported (only 'cls' and 'mean')")
        kinds = set(config.layer_types) - {"full_attention", "sliding_attention"}
        if kinds:
            raise ValueError(f"model: layer types {sorted(kinds)} are not supported")

    def embed(self, base, input_ids, token_type_ids, position_ids, inputs_embeds) -> torch.Tensor:
        # No token type embeddings (token_type_ids are ignored, as the stock model ignores them); the
        # position ids enter through the rotary embedding in qkv.
        return base.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)

    def layers(self, base: nn.Module) -> Sequence[nn.Module]:
        return base.layers

    def qkv(self, base, layer, hidden, position_ids):
        from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

        attn = layer.attn
        x = layer.attn_norm(hidden)
        B, n, _ = x.shape
        q, k, v = attn.Wqkv(x).view(B, n, 3, -1, attn.head_dim).unbind(dim=2)
        cos, sin = base.rotary_emb(x, position_ids, layer.attention_type)
        # (B, n, d) angles broadcast over the heads of the (B, n, H, d) layout: the stock rotation, per vector.
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
        return q, k, v, attn.head_dim**-0.5

    def attention_window(self, layer):
        return layer.config.sliding_window if layer.attention_type == "sliding_attention" else None

    def attention_output(self, layer, attn, hidden):
        return hidden + layer.attn.out_drop(layer.attn.Wo(attn))

    def feed_forward(self, layer, hidden):
        return hidden + layer.mlp(layer.mlp_norm(hidden))

    def encoder_output(self, base, hidden):
        return base.final_norm(hidden)

    def head_forward(self, model):
        return _sequence_classification_forward if model.config.classifier_pooling == "mean" else None

    def dims(self, config) -> dict[str, int]:
        # The GLU's input projection is two matrices wide (value and gate).
        return {
            "hidden": config.hidden_size,
            "heads": config.num_attention_heads,
            "layers": config.num_hidden_layers,
            "ffn_weights": 3 * config.hidden_size * config.intermediate_size,
        }


def _sequence_classification_forward(
    self,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    return_dict: bool | None = None,
    **kwargs,
):
    """``ModernBertForSequenceClassification.forward`` with mean pooling over the surviving real tokens.

    The stock head weights its mean with the input's (B, N) attention mask; a patched encoder returns
    (B, l_L) vectors and their mask (``kept_attention_mask``), which this forward uses instead.
    """
    from transformers.loss.loss_utils import ForSequenceClassificationLoss
    from transformers.modeling_outputs import SequenceClassifierOutput

    outputs = self.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        inputs_embeds=inputs_embeds,
        **kwargs,
    )
    hidden = outputs.last_hidden_state
    weights = outputs.kept_attention_mask.to(hidden.dtype)[:, :, None]
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
    logits = self.classifier(self.drop(self.head(pooled)))
    loss = None if labels is None else ForSequenceClassificationLoss(labels, logits, self.config)
    output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
    if return_dict is False:
        return output.to_tuple()
    return output


register_adapter(ModernBertAdapter())
