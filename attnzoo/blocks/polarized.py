"""Polarized self-attention (PSA; Liu et al., 2021)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_choice, check_image, check_positive
from attnzoo.blocks.common import Dtype, conv
from attnzoo.blocks.registry import register

Array = jax.Array


class PolarizedSelfAttention(nn.Module):
    """Polarized self-attention, parallel (PSA_p, ``mode="parallel"``) or sequential (PSA_s).

    Liu et al., "Polarized Self-Attention: Towards High-quality Pixel-wise
    Regression", 2021, eq. (1)-(6), as the official DeLightCMU/PSA code
    computes it (all 1x1 convolutions without bias, ``C/2`` inner width):

        channel-only:  A^ch = sigma(W_z(sum_j softmax_j(W_q x)_j (W_v x)_j)),
        spatial-only:  A^sp = sigma(softmax_j(GAP(W_q' x) . (W_v' x)_j)),
        parallel:      y = A^ch * x + A^sp * x,
        sequential:    y = A^sp(A^ch * x) * (A^ch * x).

    The official code has no LayerNorm after ``W_z`` (the paper's figure
    does); this block follows the code so that its weights port. Parameter
    names are the code's: ``conv_q_right``, ``conv_v_right``, ``conv_up``
    (channel-only) and ``conv_q_left``, ``conv_v_left`` (spatial-only).
    """

    channels: int
    mode: str = "parallel"
    inter_channels: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_choice(self.mode, ("parallel", "sequential"), "mode")
        if self.inter_channels is None and self.channels < 2:
            raise ValueError(f"channels={self.channels} leaves no inter_channels (channels // 2)")
        super().__post_init__()

    def _conv(self, features: int, name: str) -> nn.Conv:
        return conv(features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.he_normal(), name=name)

    def _channel_only(self, x: Array, inter: int) -> Array:
        ctx = ops.polarized_channel_context(self._conv(1, "conv_q_right")(x),
                                            self._conv(inter, "conv_v_right")(x))
        up = self._conv(self.channels, "conv_up")(ctx[:, None, None, :])
        return x * jax.nn.sigmoid(up).astype(x.dtype)

    def _spatial_only(self, x: Array, inter: int) -> Array:
        weights = ops.polarized_spatial_weights(self._conv(inter, "conv_q_left")(x),
                                                self._conv(inter, "conv_v_left")(x))
        return x * jax.nn.sigmoid(weights).astype(x.dtype)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        inter = self.inter_channels or self.channels // 2
        if self.mode == "parallel":
            return self._channel_only(x, inter) + self._spatial_only(x, inter)
        return self._spatial_only(self._channel_only(x, inter), inter)


register("polarized", PolarizedSelfAttention, paper="Liu et al. 2021",
         follows="official DeLightCMU/PSA",
         tested="official forward (both layouts), written in the tests")
