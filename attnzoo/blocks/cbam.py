"""Convolutional block attention module (CBAM)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import (
    ConvNormAct, Dtype, activation, conv, gate, global_avg_pool, reduced_width,
)
from attnzoo.blocks.registry import registered

Array = jax.Array


class CbamChannel(nn.Module):
    """CBAM channel attention: ``M_c = sigma(MLP(AvgPool(x)) + MLP(MaxPool(x)))``, shared MLP."""

    channels: int
    rd_channels: int
    use_bias: bool = False
    act: str = "relu"
    gate: str = "sigmoid"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        fc1 = conv(self.rd_channels, name="fc1", **kw)
        fc2 = conv(self.channels, name="fc2", **kw)
        act = activation(self.act)
        s = fc2(act(fc1(global_avg_pool(x)))) + fc2(act(fc1(x.max(axis=(1, 2), keepdims=True))))
        return x * gate(self.gate)(s).astype(x.dtype)


class CbamSpatial(nn.Module):
    """CBAM spatial attention: ``M_s = sigma(BN(conv_7x7([mean_c x; max_c x])))``."""

    kernel_size: int = 7
    gate: str = "sigmoid"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        pooled = jnp.concatenate(
            [x.mean(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)], axis=-1
        )
        s = ConvNormAct(1, self.kernel_size, act=None, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="conv")(pooled, train=train)
        return x * gate(self.gate)(s).astype(x.dtype)


@registered("cbam", paper="Woo et al. 2018", follows="timm `CbamModule`", tested="timm")
class CBAM(nn.Module):
    """Convolutional Block Attention Module (CBAM).

    Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018,
    eq. (1)-(3): channel attention then spatial attention,

        x' = M_c(x) * x,   x'' = M_s(x') * x',
        M_c(x) = sigma(W_1 delta(W_0 AvgPool(x)) + W_1 delta(W_0 MaxPool(x))),
        M_s(x) = sigma(f^{7x7}([AvgPool_c(x); MaxPool_c(x)])).

    Matches timm's ``CbamModule`` (``timm.layers.cbam``): MLP without bias,
    width ``make_divisible(C * rd_ratio, rd_divisor=1)``, mean then max in the
    spatial pool, 7x7 conv followed by BatchNorm (no bias).
    """

    channels: int
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 1
    spatial_kernel_size: int = 7
    act: str = "relu"
    gate: str = "sigmoid"
    mlp_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.spatial_kernel_size, "spatial_kernel_size")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        rd = reduced_width(self.channels, self.rd_ratio, self.rd_channels, self.rd_divisor)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = CbamChannel(self.channels, rd, self.mlp_bias, self.act, self.gate, name="channel", **kw)(x)
        return CbamSpatial(self.spatial_kernel_size, self.gate, name="spatial", **kw)(x, train=train)
