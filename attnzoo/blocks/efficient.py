"""Efficient self-attention with spatial reduction (PVT / SegFormer)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_divisible, check_image, check_positive
from attnzoo.blocks.common import Dtype, PatchConv
from attnzoo.blocks.registry import registered

Array = jax.Array

LINEAR_INIT = nn.initializers.truncated_normal(0.02)
"""Dense kernels: truncated normal, std 0.02 (SegFormer's and mmseg's ``trunc_normal_init``)."""


@registered("sra", paper="Xie et al. 2021 (SegFormer)",
            follows="mmseg / Hugging Face SegFormer attention",
            tested="equation (numpy); Hugging Face and mmseg SegFormer")
class SpatialReductionAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a reduced map.

    Wang et al., "Pyramid Vision Transformer", ICCV 2021, eq. (3)-(4), as
    SegFormer's "efficient self-attention" (Xie et al., NeurIPS 2021, eq. (2)):

        K, V = W_K SR(x), W_V SR(x),   SR(x) = LayerNorm(Conv_{R x R, stride R}(x)),
        head_h = softmax(Q_h K_h^T / sqrt(d)) V_h,   y = W_o [head_1; ...; head_H],

    so the ``N = H W`` queries attend to ``N / R^2`` keys: cost ``O(N^2 / R^2)``.
    ``sr_ratio = 1`` is plain multi-head self-attention (no conv, no norm).
    ``memory_efficient=True`` computes the same attention without the
    ``N x N / R^2`` map (:func:`attnzoo.ops.chunked_dot_product_attention`):
    needed for the stride-4 stage at full resolution (B0 on 1024x2048 has
    ``N = 131072`` queries). Returns ``y`` (no residual).

    Submodules: ``query``, ``key``, ``value``, ``proj`` (dense, with bias),
    ``sr`` and ``norm`` (when ``sr_ratio > 1``).

    Attributes:
      channels: input and output channels ``C``.
      num_heads: attention heads (``C`` must divide by it).
      sr_ratio: the reduction ``R`` (kernel and stride of ``sr``).
      norm_eps: epsilon of ``norm`` (1e-6 in mmseg, 1e-5 in Hugging Face's port).
      memory_efficient: chunked exact attention.
    """

    channels: int
    num_heads: int = 1
    sr_ratio: int = 1
    norm_eps: float = 1e-6
    memory_efficient: bool = False
    query_chunk_size: int = 1024
    key_chunk_size: int = 4096
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.num_heads, "num_heads")
        check_positive(self.sr_ratio, "sr_ratio")
        check_divisible(self.channels, self.num_heads, "channels", "num_heads")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        b, h, w, c = x.shape
        if min(h, w) < self.sr_ratio:
            raise ValueError(f"x is {h}x{w}, smaller than sr_ratio={self.sr_ratio}: the "
                             f"reduction would leave no keys (use larger images)")
        heads, d = self.num_heads, c // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = lambda name: nn.Dense(c, kernel_init=LINEAR_INIT, name=name, **kw)  # noqa: E731
        kv = x
        if self.sr_ratio > 1:
            r = self.sr_ratio
            kv = PatchConv(c, r, name="sr",
                           kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                           **kw)(x)
            kv = nn.LayerNorm(self.norm_eps, name="norm", **kw)(kv)

        def split(t: Array) -> Array:  # (B, h, w, C) -> (B, heads, n, d)
            return jnp.moveaxis(t.reshape(b, -1, heads, d), 2, 1)

        q, k, v = split(dense("query")(x)), split(dense("key")(kv)), split(dense("value")(kv))
        out = ops.attend(q, k, v, memory_efficient=self.memory_efficient,
                         query_chunk_size=self.query_chunk_size,
                         key_chunk_size=self.key_chunk_size)
        out = jnp.moveaxis(out, 1, 2).reshape(b, h, w, c)
        return dense("proj")(out)
