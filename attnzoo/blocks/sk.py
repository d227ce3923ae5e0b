"""Selective kernel convolution (SK)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_divisible, check_image, check_positive
from attnzoo.blocks.common import ConvNormAct, Dtype, batch_norm, conv, make_divisible
from attnzoo.blocks.registry import registered

Array = jax.Array


class SelectiveKernelAttention(nn.Module):
    """The fuse-and-select step of SK: softmax over paths of a squeezed descriptor."""

    channels: int
    num_paths: int
    attn_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, paths: Array, *, train: bool = False) -> Array:
        # paths: (B, P, H, W, C) -> weights (B, P, 1, 1, C), softmax over P.
        s = jnp.mean(paths.sum(axis=1), axis=(1, 2), keepdims=True, dtype=jnp.float32)
        s = s.astype(paths.dtype)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        z = conv(self.attn_channels, use_bias=False, name="fc_reduce", **kw)(s)
        z = jax.nn.relu(batch_norm(train, name="bn", **kw)(z))
        a = conv(self.channels * self.num_paths, use_bias=False, name="fc_select", **kw)(z)
        a = a.reshape(a.shape[0], 1, 1, self.num_paths, self.channels)
        a = jax.nn.softmax(a.astype(jnp.float32), axis=3)
        return jnp.moveaxis(a, 3, 1)


@registered("sk", paper="Li et al. 2019", follows="timm `SelectiveKernel`", tested="timm")
class SelectiveKernel(nn.Module):
    """Selective Kernel convolution (SK).

    Li et al., "Selective Kernel Networks", CVPR 2019, eq. (1)-(6): split into
    paths with different receptive fields, fuse ``U = sum_i U_i``, squeeze
    ``s = GAP(U)``, ``z = ReLU(BN(W s))``, select ``a_i = softmax_i(A_i z)``
    and aggregate ``V = sum_i a_i U_i``.

    Matches timm's ``SelectiveKernel``: kernel sizes ``(3, 5)`` realised as
    3x3 convolutions with dilation 1 and 2 (``keep_3x3``), the input channels
    split across the paths (``split_input``), attention width
    ``make_divisible(out_channels * rd_ratio, rd_divisor)``. Changes the
    channel count to ``out_channels`` (default ``channels``) and the size by
    ``stride``.
    """

    channels: int
    out_channels: int | None = None
    kernel_size: Sequence[int] = (3, 5)
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    keep_3x3: bool = True
    split_input: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        if len(self.kernel_size) < 2:
            raise ValueError(f"kernel_size needs at least 2 paths; got {self.kernel_size!r}")
        for k in self.kernel_size:
            if k < 3 or k % 2 == 0:
                raise ValueError(f"kernel_size entries must be odd and >= 3; got {self.kernel_size!r}")
        if self.split_input:
            check_divisible(self.channels, len(self.kernel_size), "channels", "number of paths")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        out = self.out_channels or self.channels
        if self.keep_3x3:
            kernels = [3] * len(self.kernel_size)
            dilations = [self.dilation * (k - 1) // 2 for k in self.kernel_size]
        else:
            kernels = list(self.kernel_size)
            dilations = [self.dilation] * len(self.kernel_size)
        n = len(kernels)
        inputs = jnp.split(x, n, axis=-1) if self.split_input else [x] * n
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        paths = jnp.stack(
            [
                ConvNormAct(out, k, stride=self.stride, dilation=d, groups=min(out, self.groups),
                            name=f"paths_{i}", **kw)(inp, train=train)
                for i, (inp, k, d) in enumerate(zip(inputs, kernels, dilations))
            ],
            axis=1,
        )
        attn_channels = self.rd_channels or make_divisible(out * self.rd_ratio, self.rd_divisor)
        weights = SelectiveKernelAttention(out, n, attn_channels, name="attn", **kw)(paths, train=train)
        return (paths * weights.astype(paths.dtype)).sum(axis=1)
