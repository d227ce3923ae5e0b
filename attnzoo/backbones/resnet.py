"""Dilated ResNets (v1b / v1c / v1d, SK-ResNet, ResNeSt) with pluggable attention.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, with
the variants segmentation uses:

* v1b: 7x7 stem, stride in the 3x3 conv of the bottleneck (torchvision's
  ResNet, mmsegmentation's ``ResNet``);
* v1c: a deep stem of three 3x3 convs (``stem_width``, ``stem_width``, ``width``),
  as mmsegmentation's ``ResNetV1c`` and DANet/CCNet use;
* v1d: deep stem and average-pool downsampling in the shortcuts (He et al.,
  "Bag of Tricks", CVPR 2019).

Output stride 8 or 16 replaces the strides of the last stages by dilation
(Yu & Koltun 2016; DeepLab); like timm and mmsegmentation's
``contract_dilation``, the first block of a dilated stage uses the previous
stage's dilation. ``multi_grid`` multiplies the last stage's dilation per
block (DeepLabV3: unit rates (1, 2, 4)). Any registered attention block
can be put inside every residual block (``attn="se"``, ``"eca"``,
``"cbam"``, ...), where timm puts it: after the last BN, before the
residual sum. Submodules are named as timm's, so its weights load by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import blocks
from attnzoo._checks import check_choice, check_image, check_positive
from attnzoo.blocks.common import ConvNormAct, Dtype, batch_norm, conv, remat

Array = jax.Array

def _avg_pool_exclude_pad(x: Array, window: int, stride: int) -> Array:
    """``AvgPool2d(window, stride, ceil_mode=True, count_include_pad=False)`` (no padding)."""
    h, w = x.shape[1:3]
    ph, pw = (-(h - window)) % stride, (-(w - window)) % stride
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    total = nn.pool(jnp.pad(x, pad), 0.0, jax.lax.add, (window, window), (stride, stride), "VALID")
    ones = jnp.pad(jnp.ones((1, h, w, 1), x.dtype), pad)
    count = nn.pool(ones, 0.0, jax.lax.add, (window, window), (stride, stride), "VALID")
    return total / count


def _avg_pool_2x2_same(x: Array) -> Array:
    """timm's ``AvgPool2dSame(2, 1)``: zero-pad right/bottom by one, average of 4 (pads counted)."""
    return nn.avg_pool(x, (2, 2), (1, 1), ((0, 1), (0, 1)), count_include_pad=True)


def shortcut(x: Array, features: int, stride: int, dilation: int, avg_down: bool,
             train: bool, **kw: Any) -> Array:
    """The projection shortcut, named as timm's ``downsample`` Sequential (called in compact).

    v1b/v1c: 1x1 conv with the stride (``downsample.0``) and BN (``.1``).
    v1d: average pool (stride 2, or timm's same-padded 2x2 in dilated stages),
    then 1x1 conv (``.1``) and BN (``.2``).
    """
    if not avg_down:
        x = conv(features, 1, stride=stride, padding=0, use_bias=False, name="downsample_0", **kw)(x)
        return batch_norm(train, name="downsample_1", **kw)(x)
    if stride > 1 and dilation == 1:
        x = _avg_pool_exclude_pad(x, 2, stride)
    elif dilation > 1:
        x = _avg_pool_2x2_same(x)
    x = conv(features, 1, padding=0, use_bias=False, name="downsample_1", **kw)(x)
    return batch_norm(train, name="downsample_2", **kw)(x)


class ResidualBlock(nn.Module):
    """What every residual block shares: ``relu(attn(F(x)) + shortcut(x))``.

    Subclasses give the residual branch ``F`` (:meth:`residual`, ending with
    a BN) and :attr:`expansion`; the attention block (any registry name,
    ``attn``) sits after the last BN, before the sum, where timm puts it, and
    is named ``attn``.

    Attributes:
      planes: the block's base width (output ``planes * expansion``).
      stride: of the block's strided conv.
      dilation: of the convs after the first.
      first_dilation: of the first 3x3 conv (the previous stage's dilation in
        the first block of a dilated stage).
      downsample: project the shortcut (1x1 conv + BN, or v1d's pool first).
      avg_down: v1d's average-pool shortcut.
      cardinality: groups of the 3x3 conv (ResNeXt / ResNeSt).
      base_width: width per group (64 in ResNet).
      attn: a block registry name put in the block, or None.
      attn_kwargs: its keyword arguments.
      expansion: (class attribute) output channels per ``planes``.
    """

    planes: int
    stride: int = 1
    dilation: int = 1
    first_dilation: int = 1
    downsample: bool = False
    avg_down: bool = False
    cardinality: int = 1
    base_width: int = 64
    attn: str | None = None
    attn_kwargs: tuple[tuple[str, Any], ...] = ()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    expansion: ClassVar[int] = 1

    @property
    def kw(self) -> dict[str, Any]:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    @property
    def out_channels(self) -> int:
        return self.planes * self.expansion

    @property
    def group_width(self) -> int:
        """Width of the grouped 3x3 conv of bottlenecks: ``floor(planes * base_width / 64) * groups``."""
        return int(math.floor(self.planes * (self.base_width / 64)) * self.cardinality)

    def bn(self, name: str, train: bool) -> nn.BatchNorm:
        return batch_norm(train, name=name, **self.kw)

    def residual(self, x: Array, train: bool) -> Array:
        """The residual branch ``F(x)`` (submodules created in the compact ``__call__``)."""
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        y = self.residual(x, train)
        if self.attn is not None:
            y = blocks.create(self.attn, channels=self.out_channels, name="attn",
                              **dict(self.attn_kwargs), **self.kw)(y, train=train)
        if self.downsample:
            x = shortcut(x, self.out_channels, self.stride, self.dilation, self.avg_down, train,
                         **self.kw)
        return jax.nn.relu(y + x)


class BasicBlock(ResidualBlock):
    """Two 3x3 conv-BN (ResNet-18/34; timm's and torchvision's ``BasicBlock``).

    Attributes:
      dilate_conv2: dilate the second 3x3 conv too, as timm and torchvision do; mmseg's
        ``BasicBlock`` does not (its ``conv2`` has padding 1 and no dilation), so its
        checkpoints convert with ``dilate_conv2=False``.
    """

    dilate_conv2: bool = True

    def residual(self, x: Array, train: bool) -> Array:
        fd, d = self.first_dilation, self.dilation if self.dilate_conv2 else 1
        y = conv(self.planes, 3, stride=self.stride, dilation=fd, padding=fd, use_bias=False,
                 name="conv1", **self.kw)(x)
        y = jax.nn.relu(self.bn("bn1", train)(y))
        y = conv(self.out_channels, 3, dilation=d, padding=d, use_bias=False, name="conv2",
                 **self.kw)(y)
        return self.bn("bn2", train)(y)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (strided, grouped), 1x1 expand, each with BN (the stride in the 3x3:
    ResNet v1b, torchvision's and timm's ``Bottleneck``)."""

    expansion: ClassVar[int] = 4

    def residual(self, x: Array, train: bool) -> Array:
        fd, width = self.first_dilation, self.group_width
        y = conv(width, 1, padding=0, use_bias=False, name="conv1", **self.kw)(x)
        y = jax.nn.relu(self.bn("bn1", train)(y))
        y = conv(width, 3, stride=self.stride, dilation=fd, padding=fd, groups=self.cardinality,
                 use_bias=False, name="conv2", **self.kw)(y)
        y = jax.nn.relu(self.bn("bn2", train)(y))
        y = conv(self.out_channels, 1, padding=0, use_bias=False, name="conv3", **self.kw)(y)
        return self.bn("bn3", train)(y)


class SelectiveKernelBasic(ResidualBlock):
    """SK-ResNet basic block (Li et al., CVPR 2019; timm's ``SelectiveKernelBasic``): a
    selective-kernel conv, then a 3x3 conv-BN.

    Attributes:
      sk_kwargs: keyword arguments of :class:`attnzoo.blocks.SelectiveKernel`.
    """

    sk_kwargs: tuple[tuple[str, Any], ...] = ()

    def residual(self, x: Array, train: bool) -> Array:
        y = blocks.SelectiveKernel(x.shape[-1], self.planes, stride=self.stride,
                                   dilation=self.first_dilation, name="conv1",
                                   **dict(self.sk_kwargs), **self.kw)(x, train=train)
        return ConvNormAct(self.out_channels, 3, dilation=self.dilation, act=None, name="conv2",
                           **self.kw)(y, train=train)


class SelectiveKernelBottleneck(ResidualBlock):
    """SK-ResNet bottleneck (timm's ``SelectiveKernelBottleneck``): 1x1, selective-kernel conv
    (strided, grouped), 1x1.

    Attributes:
      sk_kwargs: keyword arguments of :class:`attnzoo.blocks.SelectiveKernel`.
    """

    sk_kwargs: tuple[tuple[str, Any], ...] = ()
    expansion: ClassVar[int] = 4

    def residual(self, x: Array, train: bool) -> Array:
        width = self.group_width
        y = ConvNormAct(width, 1, name="conv1", **self.kw)(x, train=train)
        y = blocks.SelectiveKernel(width, width, stride=self.stride, dilation=self.first_dilation,
                                   groups=self.cardinality, name="conv2", **dict(self.sk_kwargs),
                                   **self.kw)(y, train=train)
        return ConvNormAct(self.out_channels, 1, act=None, name="conv3", **self.kw)(y, train=train)


class ResNeStBottleneck(ResidualBlock):
    """ResNeSt bottleneck (Zhang et al., CVPRW 2022; timm's ``ResNestBottleneck``): 1x1, split
    attention 3x3, then (``avd``) a 3x3 average pool carrying the stride, 1x1.

    Attributes:
      radix: split-attention radix.
      avd: stride by average pooling after the split attention instead of in it.
    """

    radix: int = 2
    avd: bool = True
    expansion: ClassVar[int] = 4

    def residual(self, x: Array, train: bool) -> Array:
        s, fd, width = self.stride, self.first_dilation, self.group_width
        avd_stride = s if (self.avd and s > 1) else 0
        y = conv(width, 1, padding=0, use_bias=False, name="conv1", **self.kw)(x)
        y = jax.nn.relu(self.bn("bn1", train)(y))
        y = blocks.SplitAttention(width, width, 3, stride=1 if avd_stride else s, padding=fd,
                                  dilation=fd, groups=self.cardinality, radix=self.radix,
                                  name="conv2", **self.kw)(y, train=train)
        if avd_stride:  # AvgPool2d(3, stride, padding=1), zero padding counted
            y = nn.avg_pool(y, (3, 3), (avd_stride, avd_stride), ((1, 1), (1, 1)),
                            count_include_pad=True)
        y = conv(self.out_channels, 1, padding=0, use_bias=False, name="conv3", **self.kw)(y)
        return self.bn("bn3", train)(y)


# Names of the block kinds (used by the registry entries and the converted-backbone files).
BLOCKS: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock, "bottleneck": Bottleneck, "sk_basic": SelectiveKernelBasic,
    "sk_bottleneck": SelectiveKernelBottleneck, "resnest": ResNeStBottleneck,
}


class ResNet(nn.Module):
    """A ResNet backbone returning multi-level features ``{"c1": ..., "c4": ...}``.

    ``__call__(x, *, train=False)`` takes NHWC images ``(B, H, W, in_channels)``
    and returns ``c1..c4`` (strides 4, 8, 8|16, 8|16|32 by output stride).

    Attributes:
      block_cls: the residual block, a :class:`ResidualBlock` subclass
        (:class:`BasicBlock`, :class:`Bottleneck`, :class:`SelectiveKernelBasic`,
        :class:`SelectiveKernelBottleneck`, :class:`ResNeStBottleneck`), as
        flax's ``ResNet(block_cls=...)``.
      block_kwargs: extra fields of ``block_cls`` (``sk_kwargs``; ``radix``, ``avd``).
      layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
      deep_stem: three 3x3 convs instead of the 7x7 (v1c / v1d).
      avg_down: average-pool downsampling in the shortcuts (v1d).
      output_stride: 8, 16 or 32.
      multi_grid: per-block dilation multipliers of the last stage.
      attn / attn_kwargs: a block registry name put in every residual block.
      width: channels of the stem output and of stage 1 (64 in every
        published ResNet; stage ``i`` has ``width * 2**i`` planes). Smaller
        values give narrow CPU-sized backbones (no pretrained weights).
      frozen_bn: BatchNorm always uses its running statistics and never
        updates them (fine-tuning with small batches). Otherwise, with
        ``train=True``, batch statistics are used: under ``jax.jit`` with the
        batch sharded over a mesh they are those of the global batch.
      in_channels: channels of the input images.
      remat: rematerialise every residual block with this policy
        (:data:`~attnzoo.blocks.common.REMAT_POLICIES`: ``"nothing"``, ``"dots"``), or None.
    """

    remat_kind: ClassVar[str] = "bottleneck"
    block_cls: type[ResidualBlock] = Bottleneck
    block_kwargs: tuple[tuple[str, Any], ...] = ()
    layers: Sequence[int] = (3, 4, 6, 3)
    deep_stem: bool = False
    stem_width: int = 32
    avg_down: bool = False
    output_stride: int = 32
    multi_grid: Sequence[int] | None = None
    cardinality: int = 1
    base_width: int = 64
    width: int = 64
    attn: str | None = None
    attn_kwargs: tuple[tuple[str, Any], ...] = ()
    frozen_bn: bool = False
    in_channels: int = 3
    remat: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if not (isinstance(self.block_cls, type) and issubclass(self.block_cls, ResidualBlock)):
            raise ValueError(f"block_cls must be a ResidualBlock subclass; got {self.block_cls!r}")
        check_choice(self.output_stride, (8, 16, 32), "output_stride")
        if len(self.layers) != 4:
            raise ValueError(f"layers must give 4 stages; got {tuple(self.layers)}")
        for n in self.layers:
            check_positive(n, "layers entries")
        check_positive(self.width, "width")
        if self.multi_grid is not None and len(self.multi_grid) != self.layers[3]:
            raise ValueError(
                f"multi_grid has {len(self.multi_grid)} rates but the last stage has "
                f"{self.layers[3]} blocks"
            )
        if self.attn is not None:
            blocks.get_spec(self.attn)
        super().__post_init__()

    def feature_info(self) -> dict[str, tuple[int, int]]:
        """``{"c1": (channels, stride), ...}`` of the features ``__call__`` returns."""
        exp = self.block_cls.expansion
        info, stride = {}, 4
        for i in range(4):
            if i > 0 and stride < self.output_stride:
                stride *= 2
            info[f"c{i + 1}"] = (self.width * 2**i * exp, stride)
        return info

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        check_image(x, self.in_channels, "x", "in_channels")
        nt = train and not self.frozen_bn
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.deep_stem:
            widths = (self.stem_width, self.stem_width, self.width)
            for i, (w, s) in enumerate(zip(widths, (2, 1, 1))):
                x = conv(w, 3, stride=s, padding=1, use_bias=False, name=f"conv1_{3 * i}", **kw)(x)
                if i < 2:
                    x = jax.nn.relu(batch_norm(nt, name=f"conv1_{3 * i + 1}", **kw)(x))
        else:
            x = conv(self.width, 7, stride=2, padding=3, use_bias=False, name="conv1", **kw)(x)
        x = jax.nn.relu(batch_norm(nt, name="bn1", **kw)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))

        features: dict[str, Array] = {}
        in_ch, net_stride, dilation, prev_dilation = self.width, 4, 1, 1
        exp = self.block_cls.expansion
        block_cls = remat(self.block_cls, self.remat)
        for stage, num_blocks in enumerate(self.layers):
            planes = self.width * 2**stage
            stride = 1 if stage == 0 else 2
            if net_stride >= self.output_stride:
                dilation, stride = dilation * stride, 1
            else:
                net_stride *= stride
            for i in range(num_blocks):
                if stage == 3 and self.multi_grid is not None:
                    block_dilation = first = dilation * self.multi_grid[i]
                else:
                    block_dilation, first = dilation, (prev_dilation if i == 0 else dilation)
                x = block_cls(
                    planes, stride=stride if i == 0 else 1, dilation=block_dilation,
                    first_dilation=first,
                    downsample=i == 0 and (stride != 1 or in_ch != planes * exp),
                    avg_down=self.avg_down, cardinality=self.cardinality,
                    base_width=self.base_width, attn=self.attn, attn_kwargs=self.attn_kwargs,
                    name=f"layer{stage + 1}_{i}", **dict(self.block_kwargs), **kw,
                )(x, train=nt)
                in_ch = planes * exp
            prev_dilation = dilation
            features[f"c{stage + 1}"] = x
        return features
