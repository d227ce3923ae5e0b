"""Criss-cross attention (CCNet)."""

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


@registered("cca", paper="Huang et al. 2019 (CCNet)",
            follows="mmcv `CrissCrossAttention`",
            tested="mmcv forward, R = 1 and 2",
            torch_renames={"gamma.scale": "gamma"})
class CrissCrossAttention(nn.Module):
    """Criss-cross attention module (CCA), applied ``recurrence`` times.

    Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation",
    ICCV 2019, eq. (1)-(2): with ``Q, K`` (``C/8`` channels) and ``V`` the
    1x1 projections of ``H``,

        d_{i,u} = Q_u . Omega_{i,u},   A = softmax(D) over the H+W-1 positions
        of the row and column of u,   H'_u = gamma * sum_i A_{i,u} Phi_{i,u} + H_u.

    ``recurrence`` applications with shared weights (RCCA; R = 2 connects
    every pair of positions) happen inside the block. Matches mmcv's pure
    PyTorch ``CrissCrossAttention`` (scalar ``gamma`` initialised to 0; the
    centre is counted once).
    """

    channels: int
    reduction: int = 8
    key_channels: int | None = None
    recurrence: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.reduction, "reduction")
        check_positive(self.recurrence, "recurrence")
        reduced_qk_channels(self.channels, self.reduction, self.key_channels)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        d = reduced_qk_channels(self.channels, self.reduction, self.key_channels)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        query_conv = conv(d, name="query_conv", **kw)
        key_conv = conv(d, name="key_conv", **kw)
        value_conv = conv(self.channels, name="value_conv", **kw)
        gamma = zero_gamma(self, self.param_dtype).astype(x.dtype)
        for _ in range(self.recurrence):
            out = ops.criss_cross_attention(query_conv(x), key_conv(x), value_conv(x))
            x = gamma * out + x
        return x
