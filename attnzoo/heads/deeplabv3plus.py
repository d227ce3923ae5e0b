"""DeepLabV3+ head (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation", ECCV 2018; mmseg's ``DepthwiseSeparableASPPHead``)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo.blocks.common import ConvNormAct, SeparableConvNormAct
from attnzoo.heads.base import Family, register, register_family
from attnzoo.heads.deeplabv3 import ASPPHead

Array = jax.Array


@register("deeplabv3plus")
class DeepLabV3PlusHead(ASPPHead):
    """ASPP with atrous separable branches, and a decoder on the stride-4 features:

    * ASPP on ``c4`` (:class:`~attnzoo.heads.ASPPHead`), its dilated branches depthwise-separable
      (a depthwise 3x3 conv-BN-ReLU of the rate, then a 1x1 conv-BN-ReLU);
    * ``c1`` reduced by a 1x1 conv-BN-ReLU to ``c1_channels`` (``c1_bottleneck``), the ASPP
      output upsampled bilinearly to its size (``align_corners``) and concatenated with it;
    * two separable 3x3 conv-BN-ReLU of ``channels`` (``sep_bottleneck_<i>``), the classifier:
      logits at stride 4.

    The head reads ``[c1, c4]`` (the family's ``in_feature``).

    Attributes:
      c1_channels: the reduced low-level width; default ``channels * 3 // 32``, mmseg's 48 for
        512 channels and 12 for its ResNet-18 recipes' 128.
    """

    c1_channels: int | None = None

    def aspp_branch(self, dilation: int, name: str) -> nn.Module:
        if dilation == 1:
            return super().aspp_branch(dilation, name)
        return SeparableConvNormAct(self.channels, 3, dilation=dilation, name=name, **self.kw)

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        self.check_features(feats, ("c1", "c4"))
        low, x = feats
        y = self.aspp(x, train)
        low = ConvNormAct(self.c1_channels or self.channels * 3 // 32, name="c1_bottleneck",
                          **self.kw)(low, train=train)
        y = ops.resize_bilinear(y, low.shape[1:3], align_corners=self.align_corners)
        y = jnp.concatenate([y.astype(low.dtype), low], -1)
        for i in range(2):
            y = SeparableConvNormAct(self.channels, name=f"sep_bottleneck_{i}", **self.kw)(
                y, train=train)
        return {"out": self.classifier()(y, train=train)}


register_family(Family(
    name="deeplabv3plus", head="deeplabv3plus", in_feature=("c1", "c4"),
    summary="ASPP with atrous separable convolutions and a stride-4 decoder "
            "(Chen et al., ECCV 2018)",
    mmseg_renames=((r"^image_pool\.1\.", "image_pool."),
                   (r"^aspp_modules\.(\d+)\.", r"aspp.\1."))))
