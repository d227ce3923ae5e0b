"""Attention to scale: learned per-pixel fusion of several scales."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import ConvNormAct, Dtype, conv
from attnzoo.blocks.registry import register

Array = jax.Array


class MultiScaleAttention(nn.Module):
    """Per-pixel soft weighting of predictions (or features) from several scales.

    Chen et al., "Attention to Scale: Scale-aware Semantic Image
    Segmentation", CVPR 2016, eq. (1)-(2): with ``f^s`` the input at scale
    ``s`` resized to a common grid and ``h`` the attention model's per-pixel
    score for each scale,

        w_i^s = exp(h_i^s) / sum_t exp(h_i^t),    g_i = sum_s w_i^s f_i^s.

    The attention model sees the concatenated inputs: a 3x3 conv + BN + ReLU
    of ``hidden_channels`` and a 1x1 conv to one score per scale (the paper
    uses 512 and S). All inputs are resized bilinearly to the size of the
    first. Called with a sequence of ``num_scales`` arrays ``(B, H_s, W_s, C)``;
    returns ``(B, H_0, W_0, C)``. The weights are sown as
    ``intermediates/scale_weights`` ``(B, H_0, W_0, S)``.
    """

    channels: int
    num_scales: int = 2
    hidden_channels: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.hidden_channels, "hidden_channels")
        if isinstance(self.num_scales, bool) or not isinstance(self.num_scales, int) \
                or self.num_scales < 2:
            raise ValueError(f"num_scales must be an integer >= 2; got {self.num_scales!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: Sequence[Array], *, train: bool = False) -> Array:
        if len(inputs) != self.num_scales:
            raise ValueError(f"inputs holds {len(inputs)} arrays; num_scales={self.num_scales}")
        for i, x in enumerate(inputs):
            check_image(x, self.channels, f"inputs[{i}]")
        b, h, w, c = inputs[0].shape
        resized = jnp.stack(
            [x if x.shape[1:3] == (h, w) else jax.image.resize(x, (b, h, w, c), "bilinear")
             for x in inputs],
            axis=-1,
        )  # (B, H, W, C, S)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = ConvNormAct(self.hidden_channels, 3, name="attention_conv", **kw)(
            resized.reshape(b, h, w, c * self.num_scales), train=train
        )
        scores = conv(self.num_scales, name="attention_score", **kw)(hidden)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
        self.sow("intermediates", "scale_weights", weights)
        return (resized * weights[:, :, :, None, :].astype(resized.dtype)).sum(axis=-1)


def _scales_example(module: MultiScaleAttention, size: tuple[int, int] = (8, 8)
                    ) -> tuple[list[Array]]:
    (h, w), c = size, module.channels
    return ([jnp.zeros((1, h // 2**i + 1, w // 2**i + 1, c), jnp.float32)
             for i in range(module.num_scales)],)


register("multiscale", MultiScaleAttention, paper="Chen et al. 2016 (attention to scale)",
         follows="—",
         tested="convex-combination properties",
         example=_scales_example)
