"""Non-local head (Wang et al., "Non-local Neural Networks", CVPR 2018; mmsegmentation's
``NLHead``)."""

from __future__ import annotations

import flax.linen as nn

from attnzoo import blocks
from attnzoo.heads.base import Family, register, register_family
from attnzoo.heads.fcn import FCNHead


@register("nonlocal")
class NLHead(FCNHead):
    """The FCN head with an embedded-Gaussian non-local block (BN after its output conv) after
    its first convolution. ``memory_efficient`` computes it without the ``N x N`` map (exact)."""

    memory_efficient: bool = False

    def attention(self) -> nn.Module:
        return blocks.NonLocal2d(self.channels, norm=True, memory_efficient=self.memory_efficient,
                                 name="attention", **self.kw)


register_family(Family(
    name="nonlocal", head="nonlocal",
    summary="embedded-Gaussian non-local block (Wang et al., CVPR 2018)",
    mmseg_renames=((r"^nl_block\.", "attention."),)))
