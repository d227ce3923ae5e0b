"""Multi-head self-attention over a 2-D feature map."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_divisible, check_image, check_positive
from attnzoo.blocks.common import Dtype, conv
from attnzoo.blocks.registry import registered

Array = jax.Array


def relative_position_bias(
    module: nn.Module, size: tuple[int, int], num_heads: int, param_dtype: Dtype
) -> Array:
    """A learned ``(heads, N, N)`` bias from a ``(2h-1)(2w-1) x heads`` table (Swin's layout)."""
    h, w = size
    table = module.param(
        "relative_position_bias_table", nn.initializers.truncated_normal(0.02),
        ((2 * h - 1) * (2 * w - 1), num_heads), param_dtype,
    )
    index = ops.relative_position_index((h, w))
    return jnp.transpose(table[index], (2, 0, 1))


@registered("mhsa", paper="Vaswani et al. 2017 / BoTNet",
            follows="timm `Attention2d` names",
            tested="equation (numpy), rel. position bias")
class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention (MHSA) on an ``(H, W)`` map.

    Vaswani et al., "Attention Is All You Need", NeurIPS 2017, eq. (1) and
    the multi-head form, over the ``N = H W`` positions, as BoTNet (Srinivas
    et al., CVPR 2021) uses it in a ResNet:

        head_h = softmax(Q_h K_h^T / sqrt(d) + B_h) V_h,   y = W_o [head_1; ...].

    ``qkv`` and ``proj`` are 1x1 convolutions with bias (timm's
    ``Attention2d`` names). ``relative_position`` = ``(H, W)`` adds a learned
    relative position bias ``B`` for maps of exactly that size; without it,
    ``memory_efficient=True`` computes the attention without the ``N x N``
    map. Returns ``y`` (no residual; compose one around it).
    """

    channels: int
    num_heads: int = 8
    relative_position: tuple[int, int] | None = None
    memory_efficient: bool = False
    query_chunk_size: int = 1024
    key_chunk_size: int = 4096
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.num_heads, "num_heads")
        check_divisible(self.channels, self.num_heads, "channels", "num_heads")
        if self.memory_efficient and self.relative_position is not None:
            raise ValueError("memory_efficient=True cannot take a relative_position bias")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        b, h, w, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = conv(3 * c, name="qkv", **kw)(x).reshape(b, h * w, 3, heads, d)
        q, k, v = (jnp.moveaxis(qkv[:, :, i], 2, 1) for i in range(3))  # (B, heads, N, d)
        if self.relative_position is not None:
            if tuple(self.relative_position) != (h, w):
                raise ValueError(
                    f"x is {h}x{w} but the relative position bias was built for "
                    f"relative_position={tuple(self.relative_position)}"
                )
            bias = relative_position_bias(self, (h, w), heads, self.param_dtype)
            out = ops.dot_product_attention(q, k, v, bias=bias)
        else:
            out = ops.attend(q, k, v, memory_efficient=self.memory_efficient,
                             query_chunk_size=self.query_chunk_size,
                             key_chunk_size=self.key_chunk_size)
        out = jnp.moveaxis(out, 1, 2).reshape(b, h, w, c)
        return conv(c, name="proj", **kw)(out)
