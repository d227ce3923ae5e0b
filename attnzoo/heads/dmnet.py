"""DMNet head (He et al., "Dynamic Multi-scale Filters for Semantic Segmentation", ICCV 2019;
mmseg's ``DMHead``)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo.blocks.common import ConvNormAct, Dtype, batch_norm, conv
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


class DynamicConvModule(nn.Module):
    """One filter size ``f`` of DMNet (mmseg's ``DCM``): each image's features filtered by
    depthwise filters generated from that image,

        K = W_g pool_f(x)  (f x f x channels, per image),
        z = relu(BN(K * f_x(x))),

    where ``pool_f`` is PyTorch's adaptive average pooling, ``W_g`` a 1x1 conv with bias
    (``filter_gen_conv``), ``f_x`` a 1x1 conv-BN-ReLU (``input_redu_conv``) and ``*`` the
    per-image depthwise filtering :func:`attnzoo.ops.dynamic_depthwise_conv`; with ``fusion``
    a last 1x1 conv-BN-ReLU (``fusion_conv``).

    Attributes:
      filter_size: ``f``.
      channels: the output width.
      fusion: end with ``fusion_conv``.
    """

    filter_size: int
    channels: int
    fusion: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        f = self.filter_size
        filters = conv(self.channels, name="filter_gen_conv", **kw)(
            ops.adaptive_avg_pool(x, (f, f)))
        x = ConvNormAct(self.channels, name="input_redu_conv", **kw)(x, train=train)
        z = ops.dynamic_depthwise_conv(x, filters.astype(x.dtype))
        z = jax.nn.relu(batch_norm(train, name="norm", **kw)(z))
        if self.fusion:
            z = ConvNormAct(self.channels, name="fusion_conv", **kw)(z, train=train)
        return z


@register("dmnet")
class DMHead(DecodeHead):
    """The dynamic multi-scale filter head: a :class:`DynamicConvModule` per size in
    ``filter_sizes`` (``dcm_modules_<i>``), their outputs concatenated with the input and fused
    by a 3x3 conv-BN-ReLU (``bottleneck``), then the classifier.

    Attributes:
      filter_sizes: the generated filters' sizes ((1, 3, 5, 7), the paper's and mmseg's).
      fusion: each module ends with a 1x1 conv-BN-ReLU (off: mmseg's default).
    """

    filter_sizes: Sequence[int] = (1, 3, 5, 7)
    fusion: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        outs = [x] + [DynamicConvModule(f, self.channels, self.fusion, name=f"dcm_modules_{i}",
                                        **self.kw)(x, train=train)
                      for i, f in enumerate(self.filter_sizes)]
        y = self.bottleneck(outs, train)
        return {"out": self.classifier()(y, train=train)}


register_family(Family(
    name="dmnet", head="dmnet",
    summary="dynamic convolutional modules: per-image generated depthwise filters "
            "(He et al., ICCV 2019)",
    mmseg_renames=()))
