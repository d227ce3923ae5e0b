"""Global context block (GCNet)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import Dtype, activation, conv, gate, global_avg_pool, reduced_width
from attnzoo.blocks.registry import registered

Array = jax.Array


class ConvMlp(nn.Module):
    """1x1 conv -> LayerNorm over channels -> act -> 1x1 conv (timm's ``ConvMlp``)."""

    hidden: int
    features: int
    act: str = "relu"
    last_zero: bool = False
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv(self.hidden, name="fc1", **kw)(x)
        x = nn.LayerNorm(epsilon=self.norm_eps, name="norm", **kw)(x)
        init = nn.initializers.zeros if self.last_zero else nn.initializers.lecun_normal()
        return conv(self.features, kernel_init=init, name="fc2", **kw)(activation(self.act)(x))


@registered("gc", paper="Cao et al. 2019 (GCNet)", follows="timm `GlobalContext`", tested="timm")
class GlobalContext(nn.Module):
    """Global Context block (GC).

    Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks
    and Beyond", ICCVW 2019, eq. (3): one query-independent attention map
    pools the context, a bottleneck transforms it, and it is fused back:

        c = sum_j softmax_j(W_k x_j) x_j,
        y = x * sigma(W_v2 ReLU(LN(W_v1 c)))     (fuse "scale", timm's default)
        y = x + W_v2 ReLU(LN(W_v1 c))            (fuse "add", the paper's default)

    Matches timm's ``GlobalContext`` (``conv_attn``, ``mlp_scale``/``mlp_add``
    with ``fc1``, ``norm``, ``fc2``; width ``C * rd_ratio``, default 1/8;
    the ``mlp_add`` output conv is zero-initialised; LayerNorm eps 1e-6 as timm,
    ``norm_eps=1e-5`` as mmcv's ``ContextBlock``).
    """

    channels: int
    use_attn: bool = True
    fuse_add: bool = False
    fuse_scale: bool = True
    rd_ratio: float = 1.0 / 8
    rd_channels: int | None = None
    rd_divisor: int = 1
    act: str = "relu"
    gate: str = "sigmoid"
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        if not (self.fuse_add or self.fuse_scale):
            raise ValueError("fuse_add and fuse_scale are both False: the block would do nothing")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b = x.shape[0]
        if self.use_attn:
            logits = conv(1, kernel_init=nn.initializers.he_normal(), name="conv_attn", **kw)(x)
            weights = jax.nn.softmax(logits.reshape(b, -1).astype(jnp.float32), axis=-1)
            context = jnp.einsum("bn,bnc->bc", weights, x.reshape(b, -1, self.channels).astype(jnp.float32))
            context = context.reshape(b, 1, 1, self.channels).astype(x.dtype)
        else:
            context = global_avg_pool(x)
        rd = reduced_width(self.channels, self.rd_ratio, self.rd_channels, self.rd_divisor)
        if self.fuse_scale:
            s = ConvMlp(rd, self.channels, self.act, norm_eps=self.norm_eps, name="mlp_scale",
                        **kw)(context)
            x = x * gate(self.gate)(s).astype(x.dtype)
        if self.fuse_add:
            x = x + ConvMlp(rd, self.channels, self.act, last_zero=True, norm_eps=self.norm_eps,
                            name="mlp_add", **kw)(context)
        return x
