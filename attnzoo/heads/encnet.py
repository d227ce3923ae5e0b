"""EncNet head (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018; mmseg's
``EncHead``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_positive
from attnzoo.blocks.common import ConvNormAct, Dtype, batch_norm
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


def uniform(low: float, high: float) -> Callable[..., Array]:
    """An initializer drawing uniformly from ``[low, high)`` (PyTorch's ``uniform_``)."""
    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, low, high)
    return init


class ContextEncodingModule(nn.Module):
    """EncNet's context encoding module (mmseg's ``EncModule``): a 1x1 conv-BN-ReLU
    (``encoding_project``), the encoding layer's ``K`` residuals
    (:func:`attnzoo.ops.context_encoding`, ``codewords`` and ``scale``), BatchNorm over the
    codes (``encoding_norm``, PyTorch's ``BatchNorm1d(K)``: statistics over batch and channels)
    and ReLU, their mean over the codes ``e`` (``(B, C)``), and the channel gate

        y = relu(x + x * sigmoid(W e + b))            (``fc``)

    Returns ``(e, y)``.

    Attributes:
      num_codes: ``K``.
    """

    num_codes: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> tuple[Array, Array]:
        b, h, w, c = x.shape
        k = self.num_codes
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        std = (k * c) ** -0.5
        codewords = self.param("codewords", uniform(-std, std), (k, c), self.param_dtype)
        scale = self.param("scale", uniform(-1.0, 0.0), (k,), self.param_dtype)
        projected = ConvNormAct(c, name="encoding_project", **kw)(x, train=train)
        e = ops.context_encoding(projected.reshape(b, h * w, c), codewords, scale)
        e = batch_norm(train, axis=1, name="encoding_norm", **kw)(e)
        e = jax.nn.relu(e).mean(axis=1)
        gamma = jax.nn.sigmoid(nn.Dense(c, name="fc", **kw)(e))
        return e, jax.nn.relu(x + x * gamma[:, None, None, :])


@register("encnet")
class EncHead(DecodeHead):
    """Context encoding head: a 3x3 conv-BN-ReLU on the deepest features (``bottleneck``;
    with ``add_lateral``, 1x1 conv-BN-ReLU of the shallower ones resized to it and a 3x3 fusion
    conv), the :class:`ContextEncodingModule` (``enc_module``), then the classifier. In training
    (and at init) also ``"se"``: image-level class logits ``(B, num_classes)`` from the encoding
    ``e`` (``se_layer``, a linear layer), scored by the semantic encoding loss (weight 0.2, as
    mmseg's configs). Reads ``[c2, c3, c4]`` (the family's ``in_feature``; mmseg's
    ``in_index=(1, 2, 3)``).

    Attributes:
      num_codes: the codewords ``K`` (32).
      add_lateral: fuse the shallower inputs (off in mmseg's configs).
    """

    num_codes: int = 32
    add_lateral: bool = False

    branches: ClassVar[tuple[tuple[str, float], ...]] = (("se", 0.2),)
    branch_losses: ClassVar[Mapping[str, str]] = {"se": "semantic_encoding"}

    def __post_init__(self) -> None:
        check_positive(self.num_codes, "num_codes")
        super().__post_init__()

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        self.check_features(feats, ("c2", "c3", "c4"), exact=False)
        y = self.conv_block(3, "bottleneck")(feats[-1], train=train)
        if self.add_lateral:
            laterals = [ops.resize_bilinear(
                ConvNormAct(self.channels, name=f"lateral_convs_{i}", **self.kw)(f, train=train),
                y.shape[1:3], align_corners=self.align_corners).astype(y.dtype)
                for i, f in enumerate(feats[:-1])]
            y = self.conv_block(3, "fusion")(jnp.concatenate([y, *laterals], -1), train=train)
        encoding, y = ContextEncodingModule(self.num_codes, name="enc_module", **self.kw)(
            y, train=train)
        out = {"out": self.classifier()(y, train=train)}
        if train or self.is_initializing():
            out["se"] = nn.Dense(self.num_classes, name="se_layer", **self.kw)(encoding)
        return out


register_family(Family(
    name="encnet", head="encnet", in_feature=("c2", "c3", "c4"),
    summary="context encoding: learned codewords gate the channels, semantic encoding loss "
            "(Zhang et al., CVPR 2018)",
    mmseg_renames=((r"^enc_module\.encoding\.0\.", "enc_module."),
                   (r"^enc_module\.encoding\.1\.", "enc_module.encoding_norm."),
                   (r"^enc_module\.fc\.0\.", "enc_module.fc."))))
