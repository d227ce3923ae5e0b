"""Concurrent spatial and channel squeeze-and-excitation (scSE)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_choice, check_image, check_positive
from attnzoo.blocks.common import Dtype, conv, global_avg_pool
from attnzoo.blocks.registry import registered

Array = jax.Array


class _ChannelSE(nn.Module):
    channels: int
    rd_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        s = jax.nn.relu(conv(self.rd_channels, name="fc1", **kw)(global_avg_pool(x)))
        return jax.nn.sigmoid(conv(self.channels, name="fc2", **kw)(s))


@registered("scse", paper="Roy et al. 2018",
            follows="smp `SCSEModule`",
            tested="equation (numpy), add and max",
            torch_renames={"cSE.1": "cse.fc1", "cSE.3": "cse.fc2", "sSE.0": "sse"})
class SpatialChannelSqueezeExcite(nn.Module):
    """Concurrent spatial and channel squeeze & excitation (scSE).

    Roy et al., "Concurrent Spatial and Channel Squeeze & Excitation in Fully
    Convolutional Networks", MICCAI 2018, section 2:

        cSE(x) = x * sigma(W_2 ReLU(W_1 GAP(x)))      (C -> C/r -> C, biases)
        sSE(x) = x * sigma(W_s x)                      (1x1 conv C -> 1)
        scSE(x) = cSE(x) + sSE(x)   (``aggregation="add"``) or their max.

    Parameter names port from segmentation_models_pytorch's ``SCSEModule``
    (``cSE.1``, ``cSE.3``, ``sSE.0``); the reduced width is ``C // reduction``.
    """

    channels: int
    reduction: int = 16
    aggregation: str = "add"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.reduction, "reduction")
        if self.channels // self.reduction < 1:
            raise ValueError(
                f"channels={self.channels} // reduction={self.reduction} leaves no channels"
            )
        check_choice(self.aggregation, ("add", "max"), "aggregation")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x * _ChannelSE(self.channels, self.channels // self.reduction, name="cse", **kw)(x)
        s = x * jax.nn.sigmoid(conv(1, name="sse", **kw)(x))
        return c + s if self.aggregation == "add" else jnp.maximum(c, s)
