"""(Shifted) window attention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_divisible, check_image, check_positive
from attnzoo.blocks.common import Dtype
from attnzoo.blocks.mhsa import relative_position_bias
from attnzoo.blocks.registry import registered

Array = jax.Array


@registered("window", paper="Liu et al. 2021 (Swin)",
            follows="Swin names",
            tested="per-window equation; shift locality")
class WindowAttention(nn.Module):
    """Window multi-head self-attention (W-MSA / SW-MSA).

    Liu et al., "Swin Transformer", ICCV 2021, section 3.2 and eq. (4):
    attention inside non-overlapping ``M x M`` windows with a relative
    position bias ``B`` from a ``(2M-1)^2 x heads`` table,

        Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + B) V,

    and, for ``shift_size > 0``, the map cyclically shifted by ``-shift``
    first with attention masked between regions that were not adjacent.
    The map is zero-padded to multiples of ``M`` and cropped back. Parameter
    names are Swin's (``qkv``, ``proj``, ``relative_position_bias_table``;
    linear layers with bias). Returns the projected attention (no residual).

    Attributes:
      mask_logit: what a masked pair's logit becomes: None excludes it exactly; Swin's code
        (the paper's and mmseg's) adds -100 to it, which the Swin backbone sets to equal it.
    """

    channels: int
    num_heads: int = 4
    window_size: int = 7
    shift_size: int = 0
    mask_logit: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.num_heads, "num_heads")
        check_positive(self.window_size, "window_size")
        check_divisible(self.channels, self.num_heads, "channels", "num_heads")
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(
                f"shift_size must be in [0, window_size={self.window_size}); got {self.shift_size}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        b, h, w, c = x.shape
        m, s, heads = self.window_size, self.shift_size, self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = jnp.pad(x, ((0, 0), (0, -h % m), (0, -w % m), (0, 0)))
        hp, wp = x.shape[1:3]
        mask = None
        if s:
            x = jnp.roll(x, (-s, -s), axis=(1, 2))
            mask = ops.shifted_window_mask(hp, wp, m, s)
        qkv = nn.Dense(3 * c, name="qkv", **kw)(x).reshape(b, hp, wp, 3, heads, c // heads)
        bias = relative_position_bias(self, (m, m), heads, self.param_dtype)
        if mask is not None and self.mask_logit is not None:  # (nH, nW, 1, M*M, M*M)
            bias = bias + jnp.where(mask, 0.0, self.mask_logit)[:, :, None]
            mask = None
        out = ops.window_attention(
            qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2], m, bias=bias, mask=mask
        )
        out = nn.Dense(c, name="proj", **kw)(out.reshape(b, hp, wp, c))
        if s:
            out = jnp.roll(out, (s, s), axis=(1, 2))
        return out[:, :h, :w]
