"""Split attention (ResNeSt)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_divisible, check_image, check_positive
from attnzoo.blocks.common import Dtype, batch_norm, conv, global_avg_pool, make_divisible
from attnzoo.blocks.registry import registered

Array = jax.Array


def radix_softmax(logits: Array, radix: int, cardinality: int) -> Array:
    """Softmax across the ``radix`` splits within each cardinal group (sigmoid if radix 1).

    ``logits`` are ``(B, cardinality * radix * c)`` ordered (group, split, c);
    the result is ordered (split, group, c), the layout of the split features.
    """
    if radix == 1:
        return jax.nn.sigmoid(logits)
    b = logits.shape[0]
    x = logits.reshape(b, cardinality, radix, -1).swapaxes(1, 2)
    return jax.nn.softmax(x.astype(jnp.float32), axis=1).reshape(b, -1)


@registered("splat", paper="Zhang et al. 2022 (ResNeSt)",
            follows="timm `SplitAttn`",
            tested="timm")
class SplitAttention(nn.Module):
    """Split-Attention convolution (Splat).

    Zhang et al., "ResNeSt: Split-Attention Networks", CVPRW 2022, eq. (1)-(3):
    a grouped convolution produces ``R`` splits per cardinal group, the splits
    are summed and pooled ``s = GAP(sum_r U_r)``, two 1x1 convolutions give
    per-split logits, and the output is ``V = sum_r a_r U_r`` with
    ``a = softmax_r`` (``sigmoid`` when ``R = 1``).

    Matches timm's ``SplitAttn`` (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``;
    attention width ``make_divisible(C_in * R * rd_ratio, min_value=32)``),
    with BatchNorm on as ResNeSt uses it (``norm=False`` gives timm's bare
    default). The default padding is ``dilation * (k // 2)`` (timm's default
    ``k // 2`` ignores dilation; ResNeSt passes the dilation in explicitly).
    """

    channels: int
    out_channels: int | None = None
    kernel_size: int = 3
    stride: int = 1
    padding: int | None = None
    dilation: int = 1
    groups: int = 1
    use_bias: bool = False
    radix: int = 2
    rd_ratio: float = 0.25
    rd_channels: int | None = None
    rd_divisor: int = 8
    norm: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        for name in ("channels", "kernel_size", "stride", "dilation", "groups", "radix"):
            check_positive(getattr(self, name), name)
        check_divisible(self.channels, self.groups * self.radix, "channels", "groups * radix")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        out = self.out_channels or self.channels
        check_divisible(out, self.groups, "out_channels", "groups")
        mid = out * self.radix
        if self.rd_channels is None:
            attn = make_divisible(self.channels * self.radix * self.rd_ratio, self.rd_divisor, 32)
        else:
            attn = self.rd_channels * self.radix
        pad = self.dilation * (self.kernel_size // 2) if self.padding is None else self.padding
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = conv(mid, self.kernel_size, stride=self.stride, dilation=self.dilation, padding=pad,
                 groups=self.groups * self.radix, use_bias=self.use_bias, name="conv", **kw)(x)
        if self.norm:
            y = batch_norm(train, name="bn0", **kw)(y)
        y = jax.nn.relu(y)
        b, h, w, _ = y.shape
        splits = y.reshape(b, h, w, self.radix, out)
        s = global_avg_pool(splits.sum(axis=3))
        s = conv(attn, groups=self.groups, name="fc1", **kw)(s)
        if self.norm:
            s = batch_norm(train, name="bn1", **kw)(s)
        logits = conv(mid, groups=self.groups, name="fc2", **kw)(jax.nn.relu(s))
        a = radix_softmax(logits.reshape(b, mid), self.radix, self.groups)
        a = a.reshape(b, 1, 1, self.radix, out).astype(y.dtype)
        return (splits * a).sum(axis=3)
