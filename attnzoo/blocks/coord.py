"""Coordinate attention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import Dtype, activation, batch_norm, conv, gate, make_divisible
from attnzoo.blocks.registry import registered

Array = jax.Array


@registered("coord", paper="Hou et al. 2021", follows="timm `CoordAttn`", tested="timm")
class CoordinateAttention(nn.Module):
    """Coordinate attention.

    Hou et al., "Coordinate Attention for Efficient Mobile Network Design",
    CVPR 2021, eq. (4)-(9): pooling along each axis keeps the position along
    the other,

        z^h = mean_w x,  z^w = mean_h x,  f = delta(BN(F_1([z^h; z^w]))),
        g^h = sigma(F_h(f^h)),  g^w = sigma(F_w(f^w)),  y = x * g^h * g^w.

    Matches timm's ``CoordAttn`` (``timm.layers.coord_attn``): width
    ``make_divisible(C * rd_ratio * se_factor, rd_divisor, round_limit=0)``,
    convolutions without bias, BN, hard-swish, sigmoid gates, optional skip.
    """

    channels: int
    rd_ratio: float = 1.0 / 16
    rd_channels: int | None = None
    rd_divisor: int = 8
    se_factor: float = 2.0 / 3
    use_bias: bool = False
    norm: bool = True
    act: str = "hard_swish"
    gate: str = "sigmoid"
    has_skip: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        b, h, w, c = x.shape
        rd = self.rd_channels or make_divisible(
            c * self.rd_ratio * self.se_factor, self.rd_divisor, round_limit=0.0
        )
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        z_h = x.mean(axis=2, keepdims=True)  # (B, H, 1, C)
        z_w = x.mean(axis=1, keepdims=True).swapaxes(1, 2)  # (B, W, 1, C)
        f = conv(rd, name="conv1", **kw)(jnp.concatenate([z_h, z_w], axis=1))
        if self.norm:
            f = batch_norm(train, dtype=self.dtype, param_dtype=self.param_dtype, name="bn1")(f)
        f = activation(self.act)(f)
        f_h, f_w = f[:, :h], f[:, h:].swapaxes(1, 2)
        g = gate(self.gate)
        a_h = g(conv(c, name="conv_h", **kw)(f_h)).astype(x.dtype)
        a_w = g(conv(c, name="conv_w", **kw)(f_w)).astype(x.dtype)
        out = x * a_w * a_h
        return out + x if self.has_skip else out
