"""Squeeze-and-excitation and its effective variant."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import (
    Dtype, activation, batch_norm, conv, gate, global_avg_pool, reduced_width,
)
from attnzoo.blocks.registry import registered

Array = jax.Array


def _squeeze(x: Array, add_maxpool: bool) -> Array:
    z = global_avg_pool(x)
    if add_maxpool:
        z = 0.5 * z + 0.5 * x.max(axis=(1, 2), keepdims=True)
    return z


@registered("se", paper="Hu et al. 2018", follows="timm `SEModule`", tested="timm")
class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (SE).

    Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, eq. (2)-(4):

        z_c = mean_{h,w} x_c,   s = sigma(W_2 delta(W_1 z)),   y_c = s_c x_c,

    with ``W_1: C -> C_r``, ``W_2: C_r -> C`` as 1x1 convolutions. Matches
    timm's ``SEModule``: ``C_r = make_divisible(C * rd_ratio, rd_divisor,
    round_limit=0)``, biases on, optional BN after ``W_1`` and optional
    ``add_maxpool`` (mean of average and max pooling in the squeeze).
    """

    channels: int
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    add_maxpool: bool = False
    use_bias: bool = True
    norm: bool = False
    act: str = "relu"
    gate: str = "sigmoid"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        rd = reduced_width(self.channels, self.rd_ratio, self.rd_channels, self.rd_divisor)
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        s = conv(rd, name="fc1", **kw)(_squeeze(x, self.add_maxpool))
        if self.norm:
            s = batch_norm(train, dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(s)
        s = conv(self.channels, name="fc2", **kw)(activation(self.act)(s))
        return x * gate(self.gate)(s).astype(x.dtype)


@registered("ese", paper="Lee & Park 2020 (CenterMask)",
            follows="timm `EffectiveSEModule`",
            tested="timm")
class EffectiveSqueezeExcite(nn.Module):
    """Effective Squeeze-Excitation (eSE).

    Lee & Park, "CenterMask: Real-Time Anchor-Free Instance Segmentation",
    CVPR 2020, eq. (3): one full-width 1x1 convolution, no reduction, so no
    channel information is lost:

        y = x * hsigmoid(W_c z),   z = mean_{h,w} x.

    Matches timm's ``EffectiveSEModule`` (hard-sigmoid gate, bias on).
    """

    channels: int
    add_maxpool: bool = False
    gate: str = "hard_sigmoid"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        s = conv(self.channels, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(
            _squeeze(x, self.add_maxpool)
        )
        return x * gate(self.gate)(s).astype(x.dtype)
