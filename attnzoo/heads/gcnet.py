"""GCNet head (Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
Beyond", ICCVW 2019; mmsegmentation's ``GCHead``)."""

from __future__ import annotations

import flax.linen as nn

from attnzoo import blocks
from attnzoo.heads.base import Family, register, register_family
from attnzoo.heads.fcn import FCNHead


@register("gcnet")
class GCHead(FCNHead):
    """The FCN head with a global context block after its first convolution: attention
    pooling, reduction 1/4 and the channel-add fusion only, its LayerNorm with PyTorch's eps
    1e-5 (mmcv's ``ContextBlock``)."""

    def attention(self) -> nn.Module:
        return blocks.GlobalContext(self.channels, fuse_add=True, fuse_scale=False,
                                    rd_ratio=0.25, norm_eps=1e-5, name="attention", **self.kw)


# mmcv's ContextBlock -> attnzoo's GlobalContext (timm's names)
register_family(Family(
    name="gcnet", head="gcnet", summary="global context block (Cao et al., ICCVW 2019)",
    mmseg_renames=((r"^gc_block\.conv_mask\.", "attention.conv_attn."),
                   (r"^gc_block\.channel_add_conv\.0\.", "attention.mlp_add.fc1."),
                   (r"^gc_block\.channel_add_conv\.1\.", "attention.mlp_add.norm."),
                   (r"^gc_block\.channel_add_conv\.3\.", "attention.mlp_add.fc2."))))
