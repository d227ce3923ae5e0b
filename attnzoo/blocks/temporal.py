"""Temporal self-attention over the frames of a clip."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import (
    check_channels, check_divisible, check_floating, check_positive, check_rank,
)
from attnzoo.blocks.common import Dtype, zero_gamma
from attnzoo.blocks.registry import register

Array = jax.Array


class TemporalAttention(nn.Module):
    """Multi-head attention along time at every pixel, with a gated residual.

    The time attention of divided space-time attention (Bertasius et al.,
    "Is Space-Time Attention All You Need for Video Understanding?", ICML
    2021), used in video segmentation to carry features between frames:

        y_{t,p} = x_{t,p} + gamma * W_o [softmax_{t'}(q_{t,p} . k_{t',p} / sqrt(d)) v_{t',p}]_heads,

    ``gamma`` initialised to 0 so the block starts as the identity (a
    per-frame model keeps its behaviour when the block is inserted).
    ``causal=True`` lets frame ``t`` see only frames ``<= t``. Input and
    output are ``(B, T, H, W, C)``.
    """

    channels: int
    num_heads: int = 1
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.num_heads, "num_heads")
        check_divisible(self.channels, self.num_heads, "channels", "num_heads")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_rank(x, 5, "x", "B, T, H, W, C")
        check_floating(x, "x")
        check_channels(x, self.channels)
        heads, d = self.num_heads, self.channels // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = nn.Dense(3 * self.channels, name="qkv", **kw)(x)
        qkv = qkv.reshape(x.shape[:-1] + (3, heads, d))
        out = ops.temporal_attention(qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :],
                                     causal=self.causal)
        out = nn.Dense(self.channels, name="proj", **kw)(out.reshape(x.shape))
        return x + zero_gamma(self, self.param_dtype).astype(out.dtype) * out


def _clip_example(module: TemporalAttention, size: tuple[int, int] = (8, 8)) -> tuple[Array]:
    return (jnp.zeros((1, 3, *size, module.channels), jnp.float32),)


register("temporal", TemporalAttention, paper="Bertasius et al. 2021 (TimeSformer)",
         follows="—",
         tested="looped reference (op); causality",
         example=_clip_example)
