"""DNLNet head (Yin et al., "Disentangled Non-Local Neural Networks", ECCV 2020; mmseg's
``DNLHead``)."""

from __future__ import annotations

import flax.linen as nn

from attnzoo import blocks
from attnzoo.heads.base import Family, register, register_family
from attnzoo.heads.fcn import FCNHead


@register("dnl")
class DNLHead(FCNHead):
    """The FCN head with a disentangled non-local block (BN after its output conv) after its
    first convolution: the whitened pairwise term and the unary term of
    :class:`attnzoo.blocks.DisentangledNonLocal2d`.

    Attributes:
      reduction: the block's inter width is ``channels // reduction``.
      use_scale: divide the pairwise logits by ``sqrt(inter)`` too.
      temperature: divides the pairwise logits (0.05, mmseg's default and configs).
      memory_efficient: the exact memory-bounded attention, without the ``N x N`` map.
    """

    reduction: int = 2
    use_scale: bool = True
    temperature: float = 0.05
    memory_efficient: bool = False

    def attention(self) -> nn.Module:
        return blocks.DisentangledNonLocal2d(
            self.channels, reduction=self.reduction, use_scale=self.use_scale,
            temperature=self.temperature, norm=True, memory_efficient=self.memory_efficient,
            name="attention", **self.kw)


register_family(Family(
    name="dnl", head="dnl",
    summary="disentangled non-local block: whitened pairwise + unary terms (Yin et al., ECCV 2020)",
    mmseg_renames=((r"^dnl_block\.", "attention."),)))
