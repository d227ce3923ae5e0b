"""FCN head (Long et al., CVPR 2015; mmsegmentation's ``FCNHead``), the base of the attention
heads that put one block after its first convolution (CCNet, non-local, GCNet, polarized
self-attention: mmsegmentation builds ``CCHead``, ``NLHead``, ``GCHead`` the same way), and
the auxiliary head of every ResNet model."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


@register("fcn")
class FCNHead(DecodeHead):
    """``num_convs`` conv-BN-ReLU of ``channels``; with ``concat_input`` the input is
    concatenated to their output and fused by one more conv (``conv_cat``). A subclass
    puts an attention block after the first convolution by overriding :meth:`attention`.

    Attributes:
      num_convs: convolutions (the auxiliary head of the recipes uses 1).
      concat_input: concatenate the input and fuse (mmsegmentation's default).
      kernel_size: of the convolutions (3; 1 on HRNet, as mmseg's ``fcn_hr18.py``).
    """

    num_convs: int = 2
    concat_input: bool = True
    kernel_size: int = 3

    def attention(self) -> nn.Module | None:
        """The block put after the first convolution (named ``attention``); none in FCN."""
        return None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        y = x
        for i in range(self.num_convs):
            y = self.conv_block(self.kernel_size, f"convs_{i}")(y, train=train)
            if i == 0 and (block := self.attention()) is not None:
                y = block(y, train=train)
        if self.concat_input:
            y = self.conv_block(self.kernel_size, "conv_cat")(jnp.concatenate([x.astype(y.dtype), y], -1),
                                               train=train)
        return {"out": self.classifier()(y, train=train)}


def hrnet_head(width: int) -> dict[str, int | bool | float]:
    """On HRNet (mmseg's ``fcn_hr18.py``): one 1x1 conv-BN-ReLU as wide as the concatenated
    branches, no concatenation, no dropout."""
    return dict(channels=width, kernel_size=1, num_convs=1, concat_input=False, dropout=0.0)


register_family(Family(
    name="fcn", head="fcn", summary="fully convolutional baseline (Long et al., CVPR 2015)",
    model_sets=("resnet", "hrnet"), set_head_kwargs={"hrnet": hrnet_head}, mmseg_renames=()))
