"""The ResNet of the R50+ViT hybrid (Dosovitskiy et al., ICLR 2021, Sec. 3.1 "Hybrid
Architecture"; the BiT ResNet-v2 body of Kolesnikov et al., ECCV 2020, without pre-activation)
as timm's ``ResNetV2(preact=False, stem_type="same", conv_layer=StdConv2dSame)`` builds it for
``vit_base_r50_s16_384``, the encoder of TransUNet (Chen et al., 2021).

* every convolution weight-standardised (Qiao et al., 2019):
  :math:`\\hat W_o = (W_o - \\mu_o) / \\sqrt{\\sigma_o^2 + \\epsilon}` over each output filter
  (``epsilon = 1e-8``), with TensorFlow's "same" padding (``ceil(n / s)`` outputs, the odd pixel
  of padding after);
* GroupNorm of 32 groups (+ ReLU) after each;
* a 7x7 stride-2 stem, 3x3 stride-2 max pooling ("same", padding ignored), then bottleneck
  stages (1x1, 3x3 carrying the stride, 1x1 at 4x the width; a projection shortcut on the
  first block of each).

``__call__`` returns ``{"c1": stem (stride 2, before the pooling), "c2": ..., "c<k+1>": ...}``,
one entry per stage (strides 4, 8, 16, ...). Submodules are named as timm's state dict
(``stem/{conv,norm}``, ``stages_<i>/blocks_<j>`` with ``conv1``, ``norm1``, ...,
``downsample/{conv,norm}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import Dtype

Array = jax.Array

GN_EPS = 1e-5
WS_EPS = 1e-8  # timm's StdConv2dSame in the hybrid ViTs


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of one axis: ``ceil(size / stride)`` outputs, the total
    ``max((ceil(size / stride) - 1) * stride + kernel - size, 0)`` split with the odd pixel
    after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class StdConv(nn.Module):
    """A weight-standardised convolution with "same" padding (module docstring), no bias:
    timm's ``StdConv2dSame``. Parameter ``kernel (k, k, C, O)``."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (k, k, x.shape[-1], self.features), self.param_dtype)
        w = kernel.astype(jnp.float32)
        mean = w.mean(axis=(0, 1, 2), keepdims=True)
        var = ((w - mean) ** 2).mean(axis=(0, 1, 2), keepdims=True)
        w = ((w - mean) / jnp.sqrt(var + WS_EPS)).astype(self.dtype)
        pads = [same_padding(n, k, s) for n in x.shape[1:3]]
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype), w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def max_pool_same(x: Array, window: int = 3, stride: int = 2) -> Array:
    """Max pooling with "same" padding whose padded pixels never win (timm's
    ``MaxPool2dSame``: padded with -inf)."""
    pads = [same_padding(n, window, stride) for n in x.shape[1:3]]
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                 (1, stride, stride, 1), [(0, 0), *pads, (0, 0)])


def group_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.GroupNorm:
    """GroupNorm of 32 groups, PyTorch's epsilon."""
    return nn.GroupNorm(num_groups=32, epsilon=GN_EPS, name=name, dtype=dtype,
                        param_dtype=param_dtype)


class ConvNorm(nn.Module):
    """:class:`StdConv` (``conv``) then GroupNorm (``norm``), then ReLU unless ``act`` is
    False: timm's stem and projection shortcut."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    act: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = group_norm("norm", **kw)(StdConv(self.features, self.kernel_size, self.stride,
                                             name="conv", **kw)(x))
        return jax.nn.relu(x) if self.act else x


class BottleneckV2(nn.Module):
    """timm's non-pre-activation ResNet-v2 bottleneck: ``relu(n3(c3(relu(n2(c2(relu(n1(c1
    x))))))) + shortcut)``, the 3x3 ``conv2`` carrying the stride, a projection shortcut
    (``downsample``) when the width or stride changes."""

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mid = self.features // 4
        shortcut = x
        if x.shape[-1] != self.features or self.stride != 1:
            shortcut = ConvNorm(self.features, 1, self.stride, act=False, name="downsample",
                                **kw)(x)
        y = jax.nn.relu(group_norm("norm1", **kw)(StdConv(mid, 1, name="conv1", **kw)(x)))
        y = jax.nn.relu(group_norm("norm2", **kw)(
            StdConv(mid, 3, self.stride, name="conv2", **kw)(y)))
        y = group_norm("norm3", **kw)(StdConv(self.features, 1, name="conv3", **kw)(y))
        return jax.nn.relu(y + shortcut)


class StageV2(nn.Module):
    """``depth`` bottlenecks (``blocks_<j>``), the first carrying the stride."""

    depth: int
    features: int
    stride: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.depth):
            x = BottleneckV2(self.features, self.stride if j == 0 else 1, name=f"blocks_{j}",
                             dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return x


class ResNetV2(nn.Module):
    """The hybrid ViT's ResNet (module docstring).

    Attributes:
      layers: bottlenecks per stage ((3, 4, 9): R50's first three stages, stride 16).
      width: the stem's width; stage ``i`` is ``4 * width * 2^i`` wide (a multiple of 8, for
        the 32 groups of its bottlenecks' inner width).
      in_channels: channels of the input images.
    """

    layers: Sequence[int] = (3, 4, 9)
    width: int = 64
    in_channels: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.width, "width")
        if self.width % 32:
            raise ValueError(f"width must be a multiple of 32 (GroupNorm's 32 groups); got "
                             f"{self.width}")
        for n in self.layers:
            check_positive(n, "layers entries")
        super().__post_init__()

    def feature_info(self) -> dict[str, tuple[int, int]]:
        """``{"c1": (channels, stride), ...}`` of the features ``__call__`` returns."""
        info = {"c1": (self.width, 2)}
        for i in range(len(self.layers)):
            info[f"c{i + 2}"] = (4 * self.width * 2**i, int(4 * 2**i))
        return info

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        check_image(x, self.in_channels, "x", "in_channels")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvNorm(self.width, 7, 2, name="stem", **kw)(x)
        features = {"c1": x}
        x = max_pool_same(x)
        for i, depth in enumerate(self.layers):
            x = StageV2(depth, 4 * self.width * 2**i, 2 if i else 1, name=f"stages_{i}", **kw)(x)
            features[f"c{i + 2}"] = x
        return features

