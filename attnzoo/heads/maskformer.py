"""MaskFormer (Cheng et al., "Per-Pixel Classification is Not All You Need for Semantic
Segmentation", NeurIPS 2021; mmsegmentation's ``MaskFormerHead`` over mmdet's): learned queries
decoded by a DETR Transformer decoder over the backbone's coarsest features, each predicting a
class and a mask over the features of an FPN pixel decoder; semantic scores as Mask2Former's
(:func:`~attnzoo.heads.mask2former.semantic_scores`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_divisible, check_positive
from attnzoo.blocks.common import Dtype
from attnzoo.heads.base import DecodeHead, Family, register, register_family
from attnzoo.heads.mask2former import (
    FFN,
    GN_EPS,
    MMSEG_QUERY_RENAMES,
    ConvGN,
    DecoderAttention,
    mmseg_query_state_dict,
    query_outputs,
    query_predictions,
    sine_position_embedding,
)

Array = jax.Array


class FPNPixelDecoder(nn.Module):
    """MaskFormer's pixel decoder (mmdet's ``PixelDecoder``): the coarsest level through a 3x3
    conv + GN + ReLU (``last_feat_conv``), then from coarse to fine each level's 1x1 conv + GN
    (``lateral_convs_<i>``) plus the coarser result upsampled (nearest), through a 3x3 conv + GN
    + ReLU (``output_convs_<i>``); the finest result's 3x3 conv (``mask_feature``) gives the
    mask features.

    Returns ``(mask_features (B, h_0, w_0, channels), the coarsest backbone level)``: mmdet's
    ``memory`` is the backbone's own last feature map.
    """

    channels: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[Array]) -> tuple[Array, Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = ConvGN(self.channels, 3, act=True, name="last_feat_conv", **kw)(feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            lateral = ConvGN(self.channels, name=f"lateral_convs_{i}", **kw)(feats[i])
            y = lateral + ops.resize_nearest(y, lateral.shape[1:3]).astype(lateral.dtype)
            y = ConvGN(self.channels, 3, act=True, name=f"output_convs_{i}", **kw)(y)
        mask_features = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)),
                                name="mask_feature", **kw)(y)
        return mask_features, feats[-1]


class DetrDecoderLayer(nn.Module):
    """A post-norm DETR decoder layer (mmdet's ``DetrTransformerDecoderLayer``): self-attention
    (``self_attn``), LayerNorm (``norms_0``), cross-attention to the memory (``cross_attn``),
    LayerNorm (``norms_1``), FFN (``ffn``), LayerNorm (``norms_2``); dropout on the attention
    weights, after each attention and in the FFN (mmseg's MaskFormer: 0.1)."""

    num_heads: int
    ffn_channels: int
    dropout: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, pos: Array, memory: Array, memory_pos: Array,
                 train: bool) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attention = dict(dropout=self.dropout, train=train)
        x = DecoderAttention(self.num_heads, name="self_attn", **kw)(x, pos, x, pos, **attention)
        x = nn.LayerNorm(GN_EPS, name="norms_0", **kw)(x)
        x = DecoderAttention(self.num_heads, name="cross_attn", **kw)(
            x, pos, memory, memory_pos, **attention)
        x = nn.LayerNorm(GN_EPS, name="norms_1", **kw)(x)
        x = FFN(self.ffn_channels, self.dropout, name="ffn", **kw)(x, train=train)
        return nn.LayerNorm(GN_EPS, name="norms_2", **kw)(x)


@register("maskformer")
class MaskFormerHead(DecodeHead):
    """MaskFormer's head (Cheng et al., NeurIPS 2021) on the backbone's four levels: the
    :class:`FPNPixelDecoder` (``pixel_decoder``) gives the stride-4 mask features; the coarsest
    backbone level, projected to ``channels`` (``decoder_input_proj``, a 1x1 conv) with the sine
    position embedding, is the memory of a ``num_layers``-layer DETR decoder
    (``transformer_decoder``: ``layers_<i>`` :class:`DetrDecoderLayer`, queries starting at zero
    with the learned position embedding ``query_embed``, each layer's output through
    ``post_norm``); each layer's queries predict class logits (``cls_embed``, the no-object class
    last) and mask logits (the MLP ``mask_embed_{0,2,4}`` dotted with the mask features).
    ``"out"``, ``"sets"`` and the intermediates ``"predictions"`` as
    :class:`~attnzoo.heads.Mask2FormerHead`'s (the sets: each decoder layer's, no set before the
    first); its set loss is :func:`attnzoo.losses.maskformer_set_loss` (focal and Dice losses
    on whole masks).

    Attributes:
      channels: the decoders' width (256).
      num_queries: the queries (100).
      num_decoder_layers: the DETR decoder's layers (6).
      num_heads: their attention heads (8).
      decoder_ffn_channels: their FFN width (2048).
      decoder_dropout: their dropout (0.1).
    """

    channels: int = 256
    num_queries: int = 100
    num_decoder_layers: int = 6
    num_heads: int = 8
    decoder_ffn_channels: int = 2048
    decoder_dropout: float = 0.1

    takes_size: ClassVar[bool] = True
    set_prediction: ClassVar[bool] = True
    loss_kwargs: ClassVar[dict[str, int]] = {}
    set_loss: ClassVar[str] = "maskformer_set"

    def __post_init__(self) -> None:
        check_positive(self.num_queries, "num_queries")
        check_positive(self.num_decoder_layers, "num_decoder_layers")
        check_divisible(self.channels, 32, "channels", "GroupNorm's 32 groups")
        check_divisible(self.channels, self.num_heads, "channels", "num_heads")
        super().__post_init__()

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, size: tuple[int, int] | None = None,
                 train: bool = False) -> dict[str, Array]:
        self.check_features(feats, ("c1", "c2", "c3", "c4"))
        kw = self.kw
        b, c = feats[0].shape[0], self.channels
        mask_features, memory = FPNPixelDecoder(c, name="pixel_decoder", **kw)(feats)
        h, w = memory.shape[1:3]
        if memory.shape[-1] != c:
            memory = nn.Conv(c, (1, 1), name="decoder_input_proj", **kw)(memory)
        memory = memory.reshape(b, h * w, c)
        memory_pos = jnp.asarray(sine_position_embedding(h, w, c // 2))[None].astype(memory.dtype)
        decoder = TransformerDecoderStack(
            self.num_classes, c, self.num_queries, self.num_decoder_layers, self.num_heads,
            self.decoder_ffn_channels, self.decoder_dropout, name="transformer_decoder", **kw)
        return query_outputs(self, decoder(mask_features, memory, memory_pos, train), size, train)


class TransformerDecoderStack(nn.Module):
    """MaskFormer's DETR decoder with its prediction heads (see :class:`MaskFormerHead`):
    ``[(class logits (B, Q, K + 1), mask logits (B, h, w, Q))]``, one per layer."""

    num_classes: int
    channels: int
    num_queries: int
    num_layers: int
    num_heads: int
    ffn_channels: int
    dropout: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, mask_features: Array, memory: Array, memory_pos: Array, train: bool
                 ) -> list[tuple[Array, Array]]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, c = memory.shape[0], self.channels
        query_embed = self.param("query_embed", nn.initializers.normal(1.0),
                                 (self.num_queries, c), self.param_dtype)
        pos = jnp.broadcast_to(query_embed.astype(self.dtype), (b, self.num_queries, c))
        x = jnp.zeros_like(pos)
        predict = query_predictions(self.num_classes, c, kw)
        out = []
        for i in range(self.num_layers):
            x = DetrDecoderLayer(self.num_heads, self.ffn_channels, self.dropout,
                                 name=f"layers_{i}", **kw)(x, pos, memory, memory_pos, train)
            out.append(predict(x, mask_features))
        return out


# mmseg's Swin MaskFormer configs: AdamW at 6e-5 (weight decay 0.01) for the whole model, linear
# warm-up over 1500 steps from 1e-6 of the rate, then poly (power 1) to 0
SWIN_RECIPE = {"optimizer.learning_rate": 6e-5, "optimizer.weight_decay": 0.01,
               "optimizer.lr_mult": {}, "optimizer.warmup_steps": 1500, "optimizer.power": 1.0}


def _mmseg_fields(model: str, protocol: Mapping[str, Any]) -> dict[str, Any]:
    """The Swin configs' optimiser (:data:`SWIN_RECIPE`)."""
    return dict(SWIN_RECIPE) if "_swin_" in model else {}


# mmseg's maskformer configs (ResNet): AdamW (lr 1e-4, weight decay 1e-4), the backbone at 0.1 of
# the rate, gradients clipped to norm 0.01, poly decay (power 0.9) to 0 over 160k steps of 16
# images; their stems write the backbones r50-d32 / swin-t_upernet
register_family(Family(
    name="maskformer", head="maskformer",
    summary="mask classification: DETR queries predict classes and masks over FPN pixel "
            "features (Cheng et al., NeurIPS 2021)",
    model_sets=("query",), in_feature=("c1", "c2", "c3", "c4"), auxiliary=False,
    quickstart={"head_kwargs": {"num_queries": 20, "num_heads": 4, "num_decoder_layers": 3,
                                "decoder_ffn_channels": 64}},
    recipe={"optimizer.name": "adamw", "optimizer.learning_rate": 1e-4,
            "optimizer.weight_decay": 1e-4, "optimizer.b1": 0.9, "optimizer.b2": 0.999,
            "optimizer.clip_norm": 0.01, "optimizer.power": 0.9, "optimizer.min_lr": 0.0,
            "optimizer.lr_mult": {"backbone": 0.1}, "batch_size": 16},
    mmseg_renames=MMSEG_QUERY_RENAMES, mmseg_state_dict=mmseg_query_state_dict,
    mmseg_fields=_mmseg_fields,
    mmseg_backbones={"r50-d32": "r50", "r101-d32": "r101", "swin-t_upernet": "swin_t",
                     "swin-s_upernet": "swin_s"}))
