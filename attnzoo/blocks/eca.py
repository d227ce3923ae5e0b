"""Efficient channel attention (ECA)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import Dtype, gate, global_avg_pool
from attnzoo.blocks.registry import registered

Array = jax.Array


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """The adaptive kernel size of ECA-Net, eq. (12): ``k = |(log2 C + b) / gamma|_odd``.

    As timm does, the result is at least 3 (the paper's formula gives 1 for
    ``C < 8``).
    """
    check_positive(channels, "channels")
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


@registered("eca", paper="Wang et al. 2020", follows="timm `EcaModule`", tested="timm")
class EfficientChannelAttention(nn.Module):
    """Efficient Channel Attention (ECA).

    Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional
    Neural Networks", CVPR 2020, eq. (9): local cross-channel interaction by a
    1-D convolution of size ``k`` over the pooled channel descriptor,

        w = sigma(C1D_k(z)),   z = mean_{h,w} x,   y = w * x,

    with ``k`` from :func:`eca_kernel_size` (``gamma=2, b=1``) unless
    ``kernel_size`` is given. Matches timm's ``EcaModule`` (no bias, zero padding).
    """

    channels: int
    kernel_size: int | None = None
    gamma: float = 2
    beta: float = 1
    gate: str = "sigmoid"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        if self.kernel_size is not None:
            check_positive(self.kernel_size, "kernel_size")
            if self.kernel_size % 2 == 0:
                raise ValueError(f"kernel_size must be odd; got {self.kernel_size}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        k = self.kernel_size or eca_kernel_size(self.channels, self.gamma, self.beta)
        z = global_avg_pool(x).reshape(x.shape[0], self.channels, 1)  # channels as a 1-D signal
        y = nn.Conv(
            1, (k,), padding=(((k - 1) // 2, (k - 1) // 2),), use_bias=False,
            dtype=self.dtype, param_dtype=self.param_dtype, name="conv",
        )(z)
        w = gate(self.gate)(y).reshape(x.shape[0], 1, 1, self.channels)
        return x * w.astype(x.dtype)
