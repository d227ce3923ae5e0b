"""DANet position and channel attention modules."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import Dtype, conv, zero_gamma
from attnzoo.blocks.registry import registered

Array = jax.Array


def reduced_qk_channels(channels: int, reduction: int, key_channels: int | None) -> int:
    """Query/key width of DANet/CCNet-style blocks: explicit, or ``channels // reduction``."""
    width = key_channels if key_channels is not None else channels // reduction
    if width < 1:
        raise ValueError(
            f"channels={channels} // reduction={reduction} leaves no query/key channels; "
            "pass more channels, a smaller reduction or key_channels"
        )
    return width


@registered("pam", paper="Fu et al. 2019 (DANet)",
            follows="official `PAM_Module`",
            tested="official forward, written in the tests")
class PositionAttention(nn.Module):
    """DANet position attention module (PAM).

    Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
    eq. (1)-(2): with ``B, C, D`` the 1x1 projections of ``A`` (``C/8``,
    ``C/8`` and ``C`` channels),

        s_ji = exp(B_i . C_j) / sum_i exp(B_i . C_j),
        E_j  = alpha * sum_i (s_ji D_i) + A_j,

    ``alpha`` (``gamma`` in the code) initialised to 0, no ``1/sqrt(d)``
    scaling. Parameters port from the official code (``query_conv``,
    ``key_conv``, ``value_conv``, ``gamma``). ``memory_efficient=True``
    gives the same output without the ``N x N`` map (whole-image inference at
    1024x2048).
    """

    channels: int
    reduction: int = 8
    key_channels: int | None = None
    memory_efficient: bool = False
    query_chunk_size: int = 1024
    key_chunk_size: int = 4096
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.reduction, "reduction")
        reduced_qk_channels(self.channels, self.reduction, self.key_channels)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        d = reduced_qk_channels(self.channels, self.reduction, self.key_channels)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = conv(d, name="query_conv", **kw)(x)
        k = conv(d, name="key_conv", **kw)(x)
        v = conv(self.channels, name="value_conv", **kw)(x)
        out = ops.position_attention(
            q, k, v, memory_efficient=self.memory_efficient,
            query_chunk_size=self.query_chunk_size, key_chunk_size=self.key_chunk_size,
        )
        return zero_gamma(self, self.param_dtype).astype(x.dtype) * out + x


@registered("cam", paper="Fu et al. 2019 (DANet)",
            follows="official `CAM_Module`",
            tested="official forward, written in the tests")
class ChannelAttention(nn.Module):
    """DANet channel attention module (CAM).

    Fu et al., CVPR 2019, eq. (3)-(4): no projections; with ``A`` as ``C x N``,

        x_ji = exp(A_i . A_j) / sum_i exp(A_i . A_j),
        E_j  = beta * sum_i (x_ji A_i) + A_j,

    where, as in the official code, the softmax is taken of
    ``max_k(energy) - energy`` (see :func:`attnzoo.ops.channel_attention_map`),
    and ``beta`` (``gamma`` in the code) starts at 0.
    """

    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        x = x.astype(self.dtype)
        return zero_gamma(self, self.param_dtype).astype(x.dtype) * ops.channel_attention(x) + x
