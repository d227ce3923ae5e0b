"""Additive attention gate (Attention U-Net)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_image, check_positive, check_rank
from attnzoo.blocks.common import ConvNormAct, Dtype, conv
from attnzoo.blocks.registry import register

Array = jax.Array


def _resize(x: Array, hw: tuple[int, int]) -> Array:
    if x.shape[1:3] == hw:
        return x
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), "bilinear")


class AttentionGate(nn.Module):
    """Additive attention gate (AG).

    Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas",
    MIDL 2018, eq. (1)-(2): a gating signal ``g`` from a coarser scale
    selects the regions of the skip features ``x`` that are passed on,

        q = psi^T ReLU(W_x^T x + W_g^T g + b_g) + b_psi,   alpha = sigmoid(q),
        y = alpha * x    (followed by a 1x1 conv + BN, as in the authors' code).

    ``W_x`` is a ``subsample x subsample`` convolution with that stride and
    no bias (the authors' grid-attention default is 2; 1 keeps full
    resolution). ``W_g g`` is resized bilinearly to the grid of ``W_x x`` and
    ``alpha`` back to ``x``'s size, so ``g`` may come from any scale.
    ``inter_channels`` defaults to ``channels // 2``. Returns ``y`` with the
    shape of ``x``; the gate ``alpha`` is sown as ``intermediates/alpha``.
    """

    channels: int
    inter_channels: int | None = None
    subsample: int = 1
    output_transform: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.subsample, "subsample")
        if self.inter_channels is not None:
            check_positive(self.inter_channels, "inter_channels")
        elif self.channels < 2:
            raise ValueError(f"channels={self.channels} leaves no inter_channels (channels // 2)")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, g: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        check_rank(g, 4, "g", "B, H', W', C_g")
        if g.shape[0] != x.shape[0]:
            raise ValueError(f"g has batch {g.shape[0]} but x has batch {x.shape[0]}")
        inter = self.inter_channels or self.channels // 2
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        s = self.subsample
        theta = conv(inter, s, stride=s, padding=0, use_bias=False, name="theta", **kw)(x)
        phi = _resize(conv(inter, name="phi", **kw)(g), theta.shape[1:3])
        q = conv(1, name="psi", **kw)(jax.nn.relu(theta + phi))
        alpha = _resize(jax.nn.sigmoid(q.astype(jnp.float32)), x.shape[1:3])
        self.sow("intermediates", "alpha", alpha)
        y = x * alpha.astype(x.dtype)
        if self.output_transform:
            y = ConvNormAct(self.channels, 1, act=None, name="W", **kw)(y, train=train)
        return y


def _gate_example(module: AttentionGate, size: tuple[int, int] = (8, 8)) -> tuple[Array, Array]:
    c, (h, w) = module.channels, size
    return (jnp.zeros((1, h, w, c), jnp.float32),
            jnp.zeros((1, (h + 1) // 2, (w + 1) // 2, 2 * c), jnp.float32))


register("attention_gate", AttentionGate, paper="Oktay et al. 2018 (Attention U-Net)",
         follows="authors' grid gate",
         tested="equation (numpy)",
         example=_gate_example)
