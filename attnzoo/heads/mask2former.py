"""Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image
Segmentation", CVPR 2022; mmsegmentation's ``Mask2FormerHead`` over mmdet's): a set of learned
queries, each predicting a class and a mask, refined by a Transformer decoder whose
cross-attention each query restricts to its own previous mask, over the features of a
multi-scale deformable-attention pixel decoder.

Semantic segmentation combines the last layer's predictions: the score of class ``c`` at pixel
``p`` is ``sum_q softmax(class_q)[c] sigmoid(mask_q[p])`` (the no-object class dropped), the
masks first resized to the input (bilinear, half-pixel centres), as mmseg's ``predict``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import ops
from attnzoo._checks import check_divisible, check_positive
from attnzoo.blocks.common import Dtype
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array

GN_EPS = 1e-5
"""GroupNorm's and LayerNorm's epsilon: PyTorch's default, which mmdet keeps."""


def sine_position_embedding(height: int, width: int, num_feats: int,
                            temperature: float = 10000.0) -> np.ndarray:
    """The sine position embedding of DETR (Carion et al., ECCV 2020) normalised to the map, as
    mmdet's ``SinePositionalEncoding(normalize=True)``: ``(height * width, 2 num_feats)`` float32,
    row-major positions; channels ``[e(y); e(x)]`` with ``e(t)_k = sin(t / T^{2 floor(k/2) / F})``
    for even ``k`` and ``cos`` for odd ``k``, ``t = 2 pi i / (n + 1e-6)`` for the 1-based index
    ``i`` of ``n`` (``F = num_feats``, ``T = temperature``). Computed in float64."""
    dim = temperature ** (2 * (np.arange(num_feats) // 2) / num_feats)

    def encode(n: int) -> np.ndarray:
        t = np.arange(1, n + 1, dtype=np.float64) / (n + 1e-6) * 2 * np.pi
        angles = t[:, None] / dim
        return np.where(np.arange(num_feats) % 2 == 0, np.sin(angles), np.cos(angles))

    ey, ex = encode(height), encode(width)
    grid = np.concatenate([np.repeat(ey[:, None], width, 1), np.repeat(ex[None], height, 0)], -1)
    return grid.reshape(height * width, 2 * num_feats).astype(np.float32)


class ConvGN(nn.Module):
    """A conv (``conv``) then GroupNorm of 32 groups (``gn``), then ReLU if ``act``: mmcv's
    ``ConvModule`` with ``norm_cfg=dict(type="GN", num_groups=32)``.

    Attributes:
      features: output channels.
      kernel_size: 1 or 3 (padding ``kernel_size // 2``).
      use_bias: the conv's bias (mmdet's pixel decoder gives its input projections one).
      act: ReLU after the norm.
    """

    features: int
    kernel_size: int = 1
    use_bias: bool = False
    act: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        pad = self.kernel_size // 2
        x = nn.Conv(self.features, (self.kernel_size,) * 2, padding=((pad, pad), (pad, pad)),
                    use_bias=self.use_bias, name="conv", **kw)(x)
        x = nn.GroupNorm(num_groups=32, epsilon=GN_EPS, name="gn", **kw)(x)
        return nn.relu(x) if self.act else x


class FFN(nn.Module):
    """``x + fc2(ReLU(fc1(x)))``, ``hidden`` wide: mmcv's ``FFN`` (two layers, identity
    added) as mmdet's DETR, Deformable DETR and Mask2Former layers use it; ``dropout`` after
    the activation and after ``fc2`` in training (mmcv's ``ffn_drop``)."""

    hidden: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = nn.relu(nn.Dense(self.hidden, name="fc1", **kw)(x))
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        y = nn.Dense(x.shape[-1], name="fc2", **kw)(y)
        return x + nn.Dropout(self.dropout)(y, deterministic=not train)


def _offset_bias(num_heads: int, num_levels: int, num_points: int) -> Callable:
    """The sampling offsets' initial bias (Deformable DETR): head ``m`` samples point ``k`` at
    ``k + 1`` times the unit direction at angle ``2 pi m / M`` (scaled so that its larger
    coordinate is 1), on every level."""

    def init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
        del key
        angles = np.arange(num_heads) * 2 * np.pi / num_heads
        grid = np.stack([np.cos(angles), np.sin(angles)], -1)
        grid = grid / np.abs(grid).max(-1, keepdims=True)
        scale = np.arange(1, num_points + 1)[None, None, :, None]
        bias = np.broadcast_to(grid[:, None, None], (num_heads, num_levels, num_points, 2))
        return jnp.asarray((bias * scale).reshape(shape), dtype)

    return init


def _split_levels(tokens: Array, shapes: Sequence[tuple[int, int]]) -> list[Array]:
    """``(B, sum h_l w_l, C)`` tokens as each level's ``(B, h_l w_l, C)`` (slices: they export
    to ONNX, where ``split`` does not)."""
    ends = np.cumsum([h * w for h, w in shapes])
    return [tokens[:, end - h * w:end] for end, (h, w) in zip(ends, shapes)]


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention (Deformable DETR, eq. (3)) of tokens over ``L``
    feature levels, with its residual: mmcv's ``MultiScaleDeformableAttention``.

    ``out = x + output_proj(MSDeformAttn(x + pos))``: the values are ``value_proj`` of the
    levels' tokens; for each query, head ``m``, level ``l`` and point ``k`` the offsets
    ``sampling_offsets(x + pos)`` (in units of the level's width and height) move the query's
    reference point, and ``softmax`` over the ``L K`` samples of ``attention_weights(x + pos)``
    weighs them (:func:`attnzoo.ops.multi_scale_deformable_attention`).

    Attributes:
      num_heads: ``M``.
      num_levels: ``L``.
      num_points: ``K``.
    """

    num_heads: int = 8
    num_levels: int = 3
    num_points: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, pos: Array, values: Array, shapes: Sequence[tuple[int, int]],
                 reference: Array) -> Array:
        """``x``, ``pos``: ``(B, N, C)`` queries and their position embedding; ``values``
        ``(B, sum h_l w_l, C)`` the levels' tokens (row-major, level after level) of
        ``shapes`` ``[(h_l, w_l)]``; ``reference`` ``(N, 2)`` normalised ``(x, y)``."""
        b, n, c = x.shape
        m, levels, k = self.num_heads, self.num_levels, self.num_points
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        xavier = nn.initializers.xavier_uniform()
        query = x + pos
        value = nn.Dense(c, kernel_init=xavier, name="value_proj", **kw)(values)
        maps = [v.reshape(b, h, w, m, c // m)
                for v, (h, w) in zip(_split_levels(value, shapes), shapes, strict=True)]
        offsets = nn.Dense(m * levels * k * 2, kernel_init=nn.initializers.zeros,
                           bias_init=_offset_bias(m, levels, k), name="sampling_offsets",
                           **kw)(query).reshape(b, n, m, levels, k, 2)
        weights = nn.Dense(m * levels * k, kernel_init=nn.initializers.zeros,
                           name="attention_weights", **kw)(query)
        weights = jax.nn.softmax(weights.reshape(b, n, m, levels * k).astype(jnp.float32), -1)
        size = jnp.asarray([(w, h) for h, w in shapes], jnp.float32)  # (L, 2): (x, y)
        locations = (reference[None, :, None, None, None, :]
                     + offsets.astype(jnp.float32) / size[None, None, None, :, None, :])
        out = ops.multi_scale_deformable_attention(
            maps, locations, weights.reshape(b, n, m, levels, k))
        return x + nn.Dense(c, kernel_init=xavier, name="output_proj", **kw)(out)


class DeformableEncoderLayer(nn.Module):
    """A post-norm Deformable DETR encoder layer: ``x = LN(MSDeformAttn(x)); x = LN(FFN(x))``
    (``self_attn``, ``norms_0``, ``ffn``, ``norms_1``; mmdet's
    ``DeformableDetrTransformerEncoderLayer``)."""

    num_heads: int
    num_levels: int
    num_points: int
    ffn_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, pos: Array, shapes: Sequence[tuple[int, int]],
                 reference: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = MultiScaleDeformableAttention(self.num_heads, self.num_levels, self.num_points,
                                          name="self_attn", **kw)(x, pos, x, shapes, reference)
        x = nn.LayerNorm(GN_EPS, name="norms_0", **kw)(x)
        x = FFN(self.ffn_channels, name="ffn", **kw)(x)
        return nn.LayerNorm(GN_EPS, name="norms_1", **kw)(x)


class PixelDecoder(nn.Module):
    """Mask2Former's pixel decoder (mmdet's ``MSDeformAttnPixelDecoder``): the coarsest
    ``num_levels`` backbone levels projected to ``channels`` (``input_convs_<i>``, 1x1 conv + GN,
    coarsest first), refined together by ``num_layers`` deformable encoder layers (``encoder``;
    each token attends around its own centre on every level; sine position embedding plus a
    learned per-level ``level_encoding``), then an FPN step to the finest level
    (``lateral_convs_0`` 1x1 conv + GN, plus the finest encoded level upsampled,
    ``output_convs_0`` 3x3 conv + GN + ReLU) and ``mask_feature`` (1x1 conv).

    Returns ``(mask_features (B, h_0, w_0, channels), [encoded levels coarsest first])``.
    """

    channels: int = 256
    num_levels: int = 3
    num_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_channels: int = 1024
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[Array]) -> tuple[Array, list[Array]]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, c = feats[0].shape[0], self.channels
        levels = [feats[len(feats) - 1 - i] for i in range(self.num_levels)]  # coarsest first
        shapes = [tuple(f.shape[1:3]) for f in levels]
        level_encoding = self.param("level_encoding", nn.initializers.normal(1.0),
                                    (self.num_levels, c), self.param_dtype)
        tokens, pos, reference = [], [], []
        for i, (f, (h, w)) in enumerate(zip(levels, shapes)):
            tokens.append(ConvGN(c, use_bias=True, name=f"input_convs_{i}", **kw)(f)
                          .reshape(b, h * w, c))
            pos.append(jnp.asarray(sine_position_embedding(h, w, c // 2))
                       + level_encoding[i].astype(jnp.float32))
            ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w,
                                 indexing="ij")
            reference.append(np.stack([xs.ravel(), ys.ravel()], -1))
        x = jnp.concatenate(tokens, 1)
        pos_all = jnp.concatenate(pos, 0)[None].astype(x.dtype)
        ref = jnp.asarray(np.concatenate(reference, 0), jnp.float32)
        for i in range(self.num_layers):
            x = DeformableEncoderLayer(self.num_heads, self.num_levels, self.num_points,
                                       self.ffn_channels, name=f"encoder_layers_{i}",
                                       **kw)(x, pos_all, shapes, ref)
        outs = [t.reshape(b, h, w, c) for t, (h, w) in zip(_split_levels(x, shapes), shapes)]
        finest = feats[len(feats) - 1 - self.num_levels]
        lateral = ConvGN(c, name="lateral_convs_0", **kw)(finest)
        y = lateral + ops.interpolate(outs[-1], lateral.shape[1:3]).astype(lateral.dtype)
        y = ConvGN(c, 3, act=True, name="output_convs_0", **kw)(y)
        mask_features = nn.Conv(c, (1, 1), name="mask_feature", **kw)(y)
        return mask_features, outs


class DecoderAttention(nn.Module):
    """``x + MHA(x + pos_x, context + pos_context, context)`` with an optional boolean mask
    (True = attend; :func:`attnzoo.ops.masked_attention`): ``nn.MultiheadAttention`` inside
    mmcv's ``MultiheadAttention``, its ``in_proj`` split in ``query`` / ``key`` / ``value``,
    ``proj`` its ``out_proj``."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, pos: Array, context: Array, context_pos: Array,
                 mask: Array | None = None, *, dropout: float = 0.0, train: bool = False
                 ) -> Array:
        """``dropout``: on the attention weights and after ``proj`` in training (mmcv's
        ``attn_drop`` and ``proj_drop``)."""
        b, n, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def heads(t: Array) -> Array:  # (B, N, C) -> (B, M, N, C / M)
            return jnp.moveaxis(t.reshape(b, t.shape[1], self.num_heads, -1), 2, 1)

        q = heads(nn.Dense(c, name="query", **kw)(x + pos))
        k = heads(nn.Dense(c, name="key", **kw)(context + context_pos))
        v = heads(nn.Dense(c, name="value", **kw)(context))
        drop = nn.Dropout(dropout, deterministic=not train)
        out = (ops.dot_product_attention(q, k, v, weights_fn=drop) if mask is None
               else ops.masked_attention(q, k, v, mask[:, None]))
        out = jnp.moveaxis(out, 1, 2).reshape(b, n, c)
        return x + drop(nn.Dense(c, name="proj", **kw)(out))


class DecoderLayer(nn.Module):
    """A post-norm Mask2Former decoder layer (mmdet's ``Mask2FormerTransformerDecoderLayer``):
    masked cross-attention to the level's tokens (``cross_attn``), LayerNorm (``norms_0``),
    self-attention (``self_attn``), LayerNorm (``norms_1``), FFN (``ffn``), LayerNorm
    (``norms_2``)."""

    num_heads: int
    ffn_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, pos: Array, memory: Array, memory_pos: Array,
                 attend: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = DecoderAttention(self.num_heads, name="cross_attn", **kw)(
            x, pos, memory, memory_pos, attend)
        x = nn.LayerNorm(GN_EPS, name="norms_0", **kw)(x)
        x = DecoderAttention(self.num_heads, name="self_attn", **kw)(x, pos, x, pos)
        x = nn.LayerNorm(GN_EPS, name="norms_1", **kw)(x)
        x = FFN(self.ffn_channels, name="ffn", **kw)(x)
        return nn.LayerNorm(GN_EPS, name="norms_2", **kw)(x)


def query_predictions(num_classes: int, channels: int, kw: dict[str, Dtype]
                      ) -> Callable[[Array, Array], tuple[Array, Array]]:
    """The prediction heads of a query decoder, made in the calling module's compact method:
    ``post_norm`` (LayerNorm), ``cls_embed`` (to ``num_classes + 1`` logits, no-object last)
    and the mask MLP ``mask_embed_{0,2,4}`` (ReLU between; mmdet's names). Returns
    ``(queries (B, Q, C), mask features (B, h, w, C)) -> (class logits (B, Q, K + 1), mask
    logits (B, h, w, Q))``, the masks the MLP's embeddings dotted with the features."""
    post_norm = nn.LayerNorm(GN_EPS, name="post_norm", **kw)
    cls_embed = nn.Dense(num_classes + 1, name="cls_embed", **kw)
    mask_embed = [nn.Dense(channels, name=f"mask_embed_{i}", **kw) for i in (0, 2, 4)]

    def predict(x: Array, mask_features: Array) -> tuple[Array, Array]:
        y = post_norm(x)
        embed = mask_embed[2](nn.relu(mask_embed[1](nn.relu(mask_embed[0](y)))))
        return cls_embed(y), jnp.einsum("bqc,bhwc->bhwq", embed, mask_features)

    return predict


class TransformerDecoder(nn.Module):
    """Mask2Former's Transformer decoder with its prediction heads: ``num_queries`` learned
    queries (``query_feat``) with a learned position embedding (``query_embed``) pass
    ``num_layers`` post-norm layers (``layers_<i>``: masked cross-attention to encoded level
    ``i mod L`` (coarsest first; a learned ``level_embed`` added, the sine embedding as its
    position), LayerNorm, self-attention, LayerNorm, FFN, LayerNorm). Before the first layer
    and after each, the queries (``post_norm``) predict class logits (``cls_embed``, with the
    no-object class last) and mask logits (the 3-layer MLP ``mask_embed_{0,2,4}`` dotted with the
    mask features, eq. (1) of the paper); a query's mask, resized to the next layer's level and
    thresholded at sigmoid 0.5, is that layer's attention mask.

    Returns ``[(class logits (B, Q, K + 1), mask logits (B, h, w, Q))]`` before the first layer
    and after each (``num_layers + 1``).
    """

    num_classes: int
    channels: int = 256
    num_queries: int = 100
    num_layers: int = 9
    num_heads: int = 8
    ffn_channels: int = 2048
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, mask_features: Array, levels: Sequence[Array]
                 ) -> list[tuple[Array, Array]]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, c = mask_features.shape[0], self.channels
        normal = nn.initializers.normal(1.0)
        level_embed = self.param("level_embed", normal, (len(levels), c), self.param_dtype)
        memory, memory_pos = [], []
        for i, level in enumerate(levels):
            h, w = level.shape[1:3]
            memory.append(level.reshape(b, h * w, c) + level_embed[i].astype(level.dtype))
            memory_pos.append(jnp.asarray(sine_position_embedding(h, w, c // 2))[None]
                              .astype(level.dtype))
        query_feat = self.param("query_feat", normal, (self.num_queries, c), self.param_dtype)
        query_embed = self.param("query_embed", normal, (self.num_queries, c), self.param_dtype)
        x = jnp.broadcast_to(query_feat.astype(self.dtype), (b, self.num_queries, c))
        pos = jnp.broadcast_to(query_embed.astype(self.dtype), (b, self.num_queries, c))
        predict_query = query_predictions(self.num_classes, c, kw)

        def predict(x: Array, level: int) -> tuple[Array, Array, Array]:
            cls_logits, masks = predict_query(x, mask_features)
            h, w = levels[level].shape[1:3]
            attend = ops.interpolate(masks, (h, w)).reshape(b, h * w, -1)
            attend = jax.lax.stop_gradient(jax.nn.sigmoid(jnp.swapaxes(attend, 1, 2)) >= 0.5)
            return cls_logits, masks, attend

        cls_logits, masks, attend = predict(x, 0)
        out = [(cls_logits, masks)]
        for i in range(self.num_layers):
            level = i % len(levels)
            x = DecoderLayer(self.num_heads, self.ffn_channels, name=f"layers_{i}", **kw)(
                x, pos, memory[level], memory_pos[level], attend)
            cls_logits, masks, attend = predict(x, (i + 1) % len(levels))
            out.append((cls_logits, masks))
        return out


def semantic_scores(class_logits: Array, mask_logits: Array) -> Array:
    """Per-pixel class scores of a set of masks (MaskFormer, Sec. 3.4, semantic inference):
    ``sum_q softmax(class_q)[c] sigmoid(mask_q)``, the last (no-object) class dropped.

    Args:
      class_logits: ``(B, Q, K + 1)``.
      mask_logits: ``(B, H, W, Q)``.

    Returns:
      ``(B, H, W, K)`` float32 scores.
    """
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), -1)[..., :-1]
    return jnp.einsum("bqk,bhwq->bhwk", probs, jax.nn.sigmoid(mask_logits.astype(jnp.float32)))


def query_outputs(head: DecodeHead, predictions: Sequence[tuple[Array, Array]],
                  size: tuple[int, int] | None, train: bool) -> dict[str, Array]:
    """A query head's outputs from its ``(class logits, mask logits)`` per decoder layer (sown
    as the intermediates ``"predictions"``): ``"out"``, :func:`semantic_scores` of the last
    (its masks resized to ``size``, bilinear with the head's ``align_corners``), in the head's
    dtype; in training (and at init) ``"sets"``, every prediction stacked along axis 1."""
    head.sow("intermediates", "predictions", predictions)
    class_logits, mask_logits = predictions[-1]
    if size is not None:
        mask_logits = ops.interpolate(mask_logits, size, align_corners=head.align_corners)
    out = {"out": semantic_scores(class_logits, mask_logits).astype(head.dtype)}
    if train or head.is_initializing():
        out["sets"] = {"classes": jnp.stack([c for c, _ in predictions], 1),
                       "masks": jnp.stack([m for _, m in predictions], 1)}
    return out


@register("mask2former")
class Mask2FormerHead(DecodeHead):
    """Mask2Former's head (Cheng et al., CVPR 2022) on the backbone's four levels (strides 4 to
    32): the :class:`PixelDecoder` (``pixel_decoder``) and the :class:`TransformerDecoder`
    (``transformer_decoder``) on its three coarsest encoded levels and its stride-4 mask
    features; ``"out"``: :func:`semantic_scores` of the last layer's predictions, the masks
    resized to the call's ``size`` (the input's: the segmentor passes it).

    In training (and at init) also ``"sets"``: every prediction set, before the first decoder
    layer and after each, stacked: ``{"classes": (B, L + 1, Q, K + 1), "masks": (B, L + 1, h, w,
    Q)}`` logits, the masks at the mask features' stride 4, which the set loss
    (:func:`attnzoo.losses.mask_set_loss`) matches and scores (``set_prediction``: the segmentor
    trains the head by it alone). Each layer's ``(class logits, mask logits)`` are sown as
    intermediates ``"predictions"`` too.

    Attributes:
      channels: the pixel and Transformer decoders' width (256).
      num_queries: the queries (100).
      num_decoder_layers: the Transformer decoder's layers (9).
      num_encoder_layers: the pixel decoder's deformable encoder layers (6).
      num_heads: attention heads of both (8).
      num_points: the deformable attention's samples per head and level (4).
      encoder_ffn_channels: the pixel decoder layers' FFN width (1024).
      decoder_ffn_channels: the Transformer decoder layers' FFN width (2048).
      loss_points: the points per mask at which the set loss compares masks (12544 = 112^2,
        mmseg's ``train_cfg.num_points``).
    """

    channels: int = 256
    num_queries: int = 100
    num_decoder_layers: int = 9
    num_encoder_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    encoder_ffn_channels: int = 1024
    decoder_ffn_channels: int = 2048
    loss_points: int = 12544

    takes_size: ClassVar[bool] = True
    set_prediction: ClassVar[bool] = True
    set_loss: ClassVar[str] = "mask_set"
    num_levels: ClassVar[int] = 3

    def __post_init__(self) -> None:
        for name in ("num_queries", "num_decoder_layers", "num_encoder_layers", "num_points",
                     "loss_points"):
            check_positive(getattr(self, name), name)
        check_divisible(self.channels, 32, "channels", "GroupNorm's 32 groups")
        check_divisible(self.channels, self.num_heads, "channels", "num_heads")
        super().__post_init__()

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, size: tuple[int, int] | None = None,
                 train: bool = False) -> dict[str, Array]:
        self.check_features(feats, ("c1", "c2", "c3", "c4"))
        mask_features, levels = PixelDecoder(
            self.channels, self.num_levels, self.num_encoder_layers, self.num_heads,
            self.num_points, self.encoder_ffn_channels, name="pixel_decoder", **self.kw)(feats)
        predictions = TransformerDecoder(
            self.num_classes, self.channels, self.num_queries, self.num_decoder_layers,
            self.num_heads, self.decoder_ffn_channels, name="transformer_decoder",
            **self.kw)(mask_features, levels)
        return query_outputs(self, predictions, size, train)

    @property
    def loss_kwargs(self) -> dict[str, int]:
        """The set loss's fields the head fixes (:func:`attnzoo.losses.mask_set_loss`)."""
        return {"num_points": self.loss_points}


def mmseg_query_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mmseg's Mask2Former and MaskFormer keys where attnzoo keeps them: the embeddings
    (``nn.Embedding`` weights) as parameters of the module that reads them, the query and
    prediction layers inside the Transformer decoder."""
    moved = {"decode_head.pixel_decoder.level_encoding.weight":
             "decode_head.pixel_decoder.level_encoding",
             **{f"decode_head.{k}.weight": f"decode_head.transformer_decoder.{k}"
                for k in ("query_embed", "query_feat", "level_embed")}}
    out = {}
    for key, value in state_dict.items():
        if key in moved:
            key = moved[key]
        elif key.startswith(("decode_head.cls_embed.", "decode_head.mask_embed.")):
            key = key.replace("decode_head.", "decode_head.transformer_decoder.", 1)
        out[key] = value
    return out


MMSEG_QUERY_RENAMES = (
    (r"^(.*_attn)\.attn\.out_proj\.", r"\1.proj."),
    (r"^(.*_attn)\.attn\.", r"\1."),
    (r"^(.*)\.ffn\.layers\.0\.0\.", r"\1.ffn.fc1."),
    (r"^(.*)\.ffn\.layers\.1\.", r"\1.ffn.fc2."))
"""The renames of mmseg's Mask2Former and MaskFormer decoder layers' keys (after
``split_in_proj``): mmcv's attention wrappers and FFN as :class:`DecoderAttention` and
:class:`FFN`."""


def _mmseg_fields(model: str, protocol: Mapping[str, Any]) -> dict[str, Any]:
    """mmseg's Mask2Former configs on ADE20K at 640 x 640 read ``ade20k_640x640.py``: images
    resized to fit 2560 x 640 (SegFormer's 640 configs test at 2048 x 640, the protocol's)."""
    if protocol["crop"] == (640, 640):
        return {"dataset.scale": (2560, 640), "dataset.eval_scale": (2560, 640)}
    return {}


# mmseg's mask2former configs: AdamW (lr 1e-4, weight decay 0.05, eps 1e-8), the backbone at 0.1
# of the rate, gradients clipped to norm 0.01, poly decay (power 0.9) to 0 over 90k (Cityscapes)
# or 160k (ADE20K) steps of 16 images (the converted configs' steps come from their names)
register_family(Family(
    name="mask2former", head="mask2former",
    summary="masked-attention mask Transformer: learned queries predict classes and masks, "
            "each attending inside its own mask (Cheng et al., CVPR 2022)",
    model_sets=("query",), in_feature=("c1", "c2", "c3", "c4"), auxiliary=False,
    # the quickstart's: 20 queries, 2 + 3 narrow layers, the set loss on 512 of the 32 x 32
    # mask positions
    quickstart={"head_kwargs": {"num_queries": 20, "num_heads": 4, "num_encoder_layers": 2,
                                "num_decoder_layers": 3, "encoder_ffn_channels": 64,
                                "decoder_ffn_channels": 64, "loss_points": 512}},
    recipe={"optimizer.name": "adamw", "optimizer.learning_rate": 1e-4,
            "optimizer.weight_decay": 0.05, "optimizer.b1": 0.9, "optimizer.b2": 0.999,
            "optimizer.clip_norm": 0.01, "optimizer.power": 0.9, "optimizer.min_lr": 0.0,
            "batch_size": 16,
            "optimizer.lr_mult": {"backbone": 0.1}},
    mmseg_renames=((r"^pixel_decoder\.encoder\.layers\.", "pixel_decoder.encoder_layers."),
                   *MMSEG_QUERY_RENAMES),
    mmseg_state_dict=mmseg_query_state_dict, mmseg_fields=_mmseg_fields))
