"""UPerNet head (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018;
mmsegmentation's ``UPerHead``): a feature pyramid over the backbone's stages with PSPNet's
pyramid pooling module on the top one, the decoder of mmseg's Swin / ViT / ConvNeXt models."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo.heads.base import DecodeHead, Family, register, register_family
from attnzoo.heads.pspnet import pyramid_pooling

Array = jax.Array


@register("uper")
class UPerHead(DecodeHead):
    """A top-down feature pyramid (FPN, Lin et al. 2017) fused at the finest level.

    For stages ``x_1 .. x_L`` (finest first): the top lateral is the pyramid pooling module on
    ``x_L`` (:func:`~attnzoo.heads.pspnet.pyramid_pooling`, fused by a 3x3 conv-BN-ReLU
    ``bottleneck``), the others 1x1 conv-BN-ReLU (``lateral_convs_<i>``); top-down,
    ``l_i <- l_i + up(l_{i+1})``; each but the top through a 3x3 conv-BN-ReLU (``fpn_convs_<i>``);
    all upsampled to the finest level, concatenated and fused by a 3x3 conv-BN-ReLU
    (``fpn_bottleneck``):

        y = conv3x3([f_1, up(f_2), ..., up(f_L)]),  f_i = conv3x3(l_i) (i < L),  f_L = l_L

    then the classifier. Bilinear upsampling with ``align_corners`` as mmseg's flag.

    Attributes:
      pool_scales: bins per side of the pyramid pooling levels ((1, 2, 3, 6)).
    """

    pool_scales: Sequence[int] = (1, 2, 3, 6)

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        self.check_features(feats, ("c1", "c2", "c3", "c4"), exact=False)
        top = self.bottleneck(pyramid_pooling(self, feats[-1], self.pool_scales, train), train)
        laterals = [self.conv_block(1, f"lateral_convs_{i}")(f, train=train)
                    for i, f in enumerate(feats[:-1])] + [top]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self.resize(laterals[i], laterals[i - 1])
        outs = [self.conv_block(3, f"fpn_convs_{i}")(lat, train=train)
                for i, lat in enumerate(laterals[:-1])] + [laterals[-1]]
        outs = [outs[0]] + [self.resize(o, outs[0]) for o in outs[1:]]
        y = self.conv_block(3, "fpn_bottleneck")(jnp.concatenate(outs, -1), train=train)
        return {"out": self.classifier()(y, train=train)}

    def resize(self, x: Array, like: Array) -> Array:
        """``x`` resized bilinearly to ``like``'s spatial size (``align_corners``)."""
        return ops.resize_bilinear(x, like.shape[1:3], align_corners=self.align_corners)


register_family(Family(
    name="upernet", head="uper", model_sets=("resnet_fpn", "swin", "vit", "twins"),
    in_feature=("c1", "c2", "c3", "c4"),
    summary="unified perceptual parsing: a feature pyramid with pyramid pooling on top "
            "(Xiao et al., ECCV 2018)",
    mmseg_renames=((r"^psp_modules\.(\d+)\.1\.", r"pool_convs.\1."),)))
