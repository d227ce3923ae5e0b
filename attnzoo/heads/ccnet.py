"""CCNet head (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV
2019; mmsegmentation's ``CCHead``)."""

from __future__ import annotations

import flax.linen as nn

from attnzoo import blocks
from attnzoo.heads.base import Family, register, register_family
from attnzoo.heads.fcn import FCNHead


@register("ccnet")
class CCHead(FCNHead):
    """The FCN head with recurrent criss-cross attention after its first convolution:
    ``recurrence`` passes of one shared block (R = 2 in the paper: one pass sees a pixel's row
    and column, two the whole image)."""

    recurrence: int = 2

    def attention(self) -> nn.Module:
        return blocks.CrissCrossAttention(self.channels, recurrence=self.recurrence,
                                          name="attention", **self.kw)


register_family(Family(
    name="ccnet", head="ccnet",
    summary="recurrent criss-cross attention (Huang et al., ICCV 2019)",
    mmseg_renames=((r"^cca\.", "attention."),)))
