"""Hard (top-k) self-attention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import Dtype, conv, zero_gamma
from attnzoo.blocks.danet import reduced_qk_channels
from attnzoo.blocks.registry import registered

Array = jax.Array


@registered("hard", paper="top-k attention (Gupta et al. 2021)",
            follows="—",
            tested="looped top-k reference (op)")
class HardAttention(nn.Module):
    """Position attention that keeps only the ``top_k`` strongest keys per query.

    The DANet position-attention layout (``C/8`` query/key, ``C`` value,
    zero-initialised ``gamma`` residual) with the straight-through top-k
    weights of :func:`attnzoo.ops.hard_attention_weights`:

        y_j = gamma * sum_{i in topk_j} softmax_i(q_j . k_i) v_i + x_j,

    gradients reaching every key through the dense softmax. Keys scaled by
    ``1/sqrt(d)``. ``memory_efficient`` chunks the queries (exact).
    """

    channels: int
    top_k: int = 16
    reduction: int = 8
    key_channels: int | None = None
    memory_efficient: bool = False
    query_chunk_size: int = 1024
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.top_k, "top_k")
        check_positive(self.reduction, "reduction")
        reduced_qk_channels(self.channels, self.reduction, self.key_channels)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        b, h, w, c = x.shape
        if self.top_k > h * w:
            raise ValueError(f"top_k={self.top_k} exceeds the {h * w} positions of a {h}x{w} map")
        d = reduced_qk_channels(c, self.reduction, self.key_channels)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = conv(d, name="query_conv", **kw)(x).reshape(b, h * w, d)
        k = conv(d, name="key_conv", **kw)(x).reshape(b, h * w, d)
        v = conv(c, name="value_conv", **kw)(x).reshape(b, h * w, c)
        out = ops.hard_attention(
            q, k, v, top_k=self.top_k, memory_efficient=self.memory_efficient,
            query_chunk_size=self.query_chunk_size,
        )
        return zero_gamma(self, self.param_dtype).astype(x.dtype) * out.reshape(x.shape) + x
