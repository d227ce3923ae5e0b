"""Polarized self-attention head (Liu et al., "Polarized Self-Attention: Towards High-quality
Pixel-wise Regression", 2021): the PSA block in the FCN head."""

from __future__ import annotations

import flax.linen as nn

from attnzoo import blocks
from attnzoo.heads.base import Family, register, register_family
from attnzoo.heads.fcn import FCNHead


@register("polarized")
class PolarizedHead(FCNHead):
    """The FCN head with a polarized self-attention block after its first convolution,
    ``mode`` ``"parallel"`` (PSA_p, the default) or ``"sequential"`` (PSA_s)."""

    mode: str = "parallel"

    def attention(self) -> nn.Module:
        return blocks.PolarizedSelfAttention(self.channels, mode=self.mode, name="attention",
                                             **self.kw)


register_family(Family(
    name="polarized", head="polarized",
    summary="polarized self-attention, parallel or sequential (Liu et al., 2021)"))
