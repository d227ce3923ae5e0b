"""Decode heads: the attention segmentation heads and their baselines (mmsegmentation's layout).

Every head maps backbone features to class logits at the feature
resolution and returns a dict: ``{"out": logits}``, plus the DANet branch
logits ``"pam"`` and ``"cam"`` in training. Convolutions are 3x3 conv + BN +
ReLU (``ConvNormAct``); the classifier is dropout (0.1, as the references)
and a 1x1 conv with bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import blocks
from attnzoo.blocks.common import ConvNormAct, Dtype, conv, global_avg_pool

Array = jax.Array


class Classifier(nn.Module):
    """Channel dropout then a 1x1 conv to ``num_classes`` (mmsegmentation's ``cls_seg``).

    The dropout zeroes whole feature maps (PyTorch's ``Dropout2d``, which
    mmsegmentation's decode heads and the official DANet / CCNet heads use),
    not single activations.
    """

    num_classes: int
    dropout: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
        return conv(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.normal(0.01), name="conv_seg")(x)


class FCNHead(nn.Module):
    """FCN head (Long et al., CVPR 2015; mmsegmentation's ``FCNHead``).

    ``num_convs`` 3x3 conv-BN-ReLU of ``channels``; with ``concat_input`` the
    input is concatenated and fused by one more 3x3 conv. A block from the
    registry (``attention``) can sit between the first and second conv; this
    is how the CCNet, non-local, PSA and GC heads are built, as in
    mmsegmentation (``CCHead``, ``NLHead``, ``GCHead`` subclass ``FCNHead``).
    """

    num_classes: int
    channels: int = 512
    num_convs: int = 2
    concat_input: bool = True
    dropout: float = 0.1
    attention: str | None = None
    attention_kwargs: tuple[tuple[str, object], ...] = ()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = x
        for i in range(self.num_convs):
            y = ConvNormAct(self.channels, 3, name=f"convs_{i}", **kw)(y, train=train)
            if i == 0 and self.attention is not None:
                y = blocks.create(self.attention, channels=self.channels, name="attention",
                                  **dict(self.attention_kwargs), **kw)(y, train=train)
        if self.concat_input:
            y = ConvNormAct(self.channels, 3, name="conv_cat", **kw)(
                jnp.concatenate([x.astype(y.dtype), y], axis=-1), train=train)
        return {"out": Classifier(self.num_classes, self.dropout, name="cls", **kw)(y, train=train)}


class DANetHead(nn.Module):
    """DANet head (Fu et al., CVPR 2019; mmsegmentation's ``DAHead``).

    Two branches on a 3x3 conv reduction of the input to ``channels``
    (C/4 of 2048 = 512): position attention (query/key width
    ``pam_channels``) and channel attention, each followed by a 3x3 conv;
    their sum feeds the main classifier. In training the head also returns
    each branch's own classifier output (``"pam"``, ``"cam"``), which the
    paper and mmsegmentation add to the loss; at test only ``"out"``.
    ``memory_efficient`` switches PAM to the exact memory-bounded path
    (whole-image inference at 1024x2048).
    """

    num_classes: int
    channels: int = 512
    pam_channels: int = 64
    dropout: float = 0.1
    memory_efficient: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = ConvNormAct(self.channels, 3, name="pam_in_conv", **kw)(x, train=train)
        p = blocks.PositionAttention(self.channels, key_channels=self.pam_channels,
                                     memory_efficient=self.memory_efficient, name="pam", **kw)(p)
        p = ConvNormAct(self.channels, 3, name="pam_out_conv", **kw)(p, train=train)
        c = ConvNormAct(self.channels, 3, name="cam_in_conv", **kw)(x, train=train)
        c = blocks.ChannelAttention(self.channels, name="cam", **kw)(c)
        c = ConvNormAct(self.channels, 3, name="cam_out_conv", **kw)(c, train=train)
        out = {"out": Classifier(self.num_classes, self.dropout, name="cls", **kw)(p + c, train=train)}
        pam_cls = Classifier(self.num_classes, self.dropout, name="pam_cls", **kw)
        cam_cls = Classifier(self.num_classes, self.dropout, name="cam_cls", **kw)
        if train or self.is_initializing():
            out["pam"] = pam_cls(p, train=train)
            out["cam"] = cam_cls(c, train=train)
        return out


class ASPPHead(nn.Module):
    """ASPP head of DeepLabV3 (Chen et al., 2017; mmsegmentation's ``ASPPHead``).

    Image pooling branch (GAP, 1x1 conv, broadcast back) and parallel
    branches with dilations ``dilations`` (1x1 for rate 1, 3x3 otherwise),
    concatenated and fused by a 3x3 bottleneck conv. (12, 24, 36) are the
    rates for output stride 8.
    """

    num_classes: int
    channels: int = 512
    dilations: Sequence[int] = (1, 12, 24, 36)
    dropout: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        pooled = ConvNormAct(self.channels, 1, name="image_pool", **kw)(global_avg_pool(x), train=train)
        branches = [jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,))]
        for i, d in enumerate(self.dilations):
            k = 1 if d == 1 else 3
            branches.append(ConvNormAct(self.channels, k, dilation=d, name=f"aspp_{i}", **kw)(
                x, train=train))
        y = ConvNormAct(self.channels, 3, name="bottleneck", **kw)(
            jnp.concatenate(branches, axis=-1), train=train)
        return {"out": Classifier(self.num_classes, self.dropout, name="cls", **kw)(y, train=train)}


__all__ = ["ASPPHead", "Classifier", "DANetHead", "FCNHead"]
