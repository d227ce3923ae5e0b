"""APCNet head (He et al., "Adaptive Pyramid Context Network for Semantic Segmentation", CVPR
2019; mmseg's ``APCHead``)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo.blocks.common import ConvNormAct, Dtype, conv, global_avg_pool
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


class AdaptiveContextModule(nn.Module):
    """One pyramid scale ``s`` of APCNet (mmseg's ``ACM``): every position takes its own
    sigmoid-weighted mix of the ``s x s`` region descriptors,

        x' = f_x(x),   p = f_p(pool_s(x)),   g = f_g(pool_1(x')),
        a_i = sigmoid(W_a (x'_i + g)) in (0, 1)^{s^2},
        z_i = relu(f_r(sum_k a_ik p_k) + x'_i),

    where ``f_x`` (``input_redu_conv``), ``f_p`` (``pooled_redu_conv``), ``f_g``
    (``global_info``), ``f_r`` (``residual_conv``) are 1x1 conv-BN-ReLU to ``channels``, ``W_a``
    a 1x1 conv with bias to ``s^2`` (``gla``) and ``pool_s`` PyTorch's adaptive average pooling;
    with ``fusion`` a last 1x1 conv-BN-ReLU (``fusion_conv``).

    Attributes:
      pool_scale: ``s``.
      channels: the output width.
      fusion: end with ``fusion_conv``.
    """

    pool_scale: int
    channels: int
    fusion: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        s, b = self.pool_scale, x.shape[0]
        pooled = ConvNormAct(self.channels, name="pooled_redu_conv", **kw)(
            ops.adaptive_avg_pool(x, (s, s)), train=train)
        x = ConvNormAct(self.channels, name="input_redu_conv", **kw)(x, train=train)
        context = ConvNormAct(self.channels, name="global_info", **kw)(global_avg_pool(x),
                                                                        train=train)
        affinity = jax.nn.sigmoid(conv(s * s, name="gla", **kw)(x + context))
        z = jnp.einsum("bhwk,bkc->bhwc", affinity, pooled.reshape(b, s * s, self.channels))
        z = ConvNormAct(self.channels, name="residual_conv", **kw)(z, train=train)
        z = jax.nn.relu(z + x)
        if self.fusion:
            z = ConvNormAct(self.channels, name="fusion_conv", **kw)(z, train=train)
        return z


@register("apcnet")
class APCHead(DecodeHead):
    """The adaptive pyramid context head: an :class:`AdaptiveContextModule` per scale in
    ``pool_scales`` (``acm_modules_<i>``), their outputs concatenated with the input and fused
    by a 3x3 conv-BN-ReLU (``bottleneck``), then the classifier.

    Attributes:
      pool_scales: the region grids' sides ((1, 2, 3, 6), the paper's and mmseg's).
      fusion: each module ends with a 1x1 conv-BN-ReLU (mmseg's default).
    """

    pool_scales: Sequence[int] = (1, 2, 3, 6)
    fusion: bool = True

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        outs = [x] + [AdaptiveContextModule(s, self.channels, self.fusion,
                                            name=f"acm_modules_{i}", **self.kw)(x, train=train)
                      for i, s in enumerate(self.pool_scales)]
        y = self.bottleneck(outs, train)
        return {"out": self.classifier()(y, train=train)}


register_family(Family(
    name="apcnet", head="apcnet",
    summary="adaptive context modules: per-position sigmoid mixes of pyramid region features "
            "(He et al., CVPR 2019)",
    mmseg_renames=()))
