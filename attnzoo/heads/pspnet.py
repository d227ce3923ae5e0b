"""PSPNet head (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from attnzoo import ops
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


@register("psp")
class PSPHead(DecodeHead):
    """The pyramid pooling module (mmsegmentation's ``PSPHead``).

    The features are average-pooled into ``b x b`` bins for each ``b`` in
    ``pool_scales`` (PyTorch's adaptive bins), each pooled map goes through a
    1x1 conv-BN-ReLU of ``channels`` and is upsampled bilinearly back
    (PyTorch's ``align_corners`` flag as the field); the input and the upsampled maps are
    concatenated and fused by a 3x3 conv-BN-ReLU (``bottleneck``):

        y = conv3x3([x, up(conv1x1(pool_1(x))), ..., up(conv1x1(pool_6(x)))])

    the global-to-local context prior of the paper (Fig. 3). Submodules
    ``pool_convs_<i>`` hold mmsegmentation's ``psp_modules.<i>.1``.

    Attributes:
      pool_scales: bins per side of each pyramid level; (1, 2, 3, 6) in the paper.
    """

    pool_scales: Sequence[int] = (1, 2, 3, 6)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        y = self.bottleneck(pyramid_pooling(self, x, self.pool_scales, train), train)
        return {"out": self.classifier()(y, train=train)}


def pyramid_pooling(head: DecodeHead, x: Array, pool_scales: Sequence[int], train: bool
                    ) -> list[Array]:
    """``x`` and its pyramid levels: for each ``b`` of ``pool_scales``, ``x`` average-pooled into
    ``b x b`` adaptive bins, a 1x1 conv-BN-ReLU of ``head.channels`` (``pool_convs_<i>``) and
    bilinear upsampling back (``head.align_corners``); call inside ``head``'s compact
    ``__call__`` (PSPNet's and UPerNet's pyramid pooling module)."""
    size = x.shape[1:3]
    outs = [x]
    for i, scale in enumerate(pool_scales):
        pooled = ops.adaptive_avg_pool(x, (scale, scale))
        pooled = head.conv_block(1, f"pool_convs_{i}")(pooled, train=train)
        outs.append(ops.resize_bilinear(pooled, size, align_corners=head.align_corners))
    return outs


register_family(Family(
    name="pspnet", head="psp", summary="pyramid pooling module (Zhao et al., CVPR 2017)",
    mmseg_renames=((r"^psp_modules\.(\d+)\.1\.", r"pool_convs.\1."),)))
