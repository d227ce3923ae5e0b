"""FCN head (Long et al., CVPR 2015; mmsegmentation's ``FCNHead``) and its attention variants.

mmsegmentation builds the CCNet, non-local and GCNet heads as subclasses of
``FCNHead`` that put one attention block after the first convolution; so does
attnzoo (:class:`CCHead`, :class:`NLHead`, :class:`GCHead` and the polarized
self-attention head :class:`PolarizedHead`), each overriding :meth:`FCNHead.attention`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import blocks
from attnzoo.heads.base import DecodeHead, register

Array = jax.Array


@register("fcn")
class FCNHead(DecodeHead):
    """``num_convs`` 3x3 conv-BN-ReLU of ``channels``; with ``concat_input`` the input is
    concatenated to their output and fused by one more 3x3 conv (``conv_cat``).

    Attributes:
      num_convs: 3x3 convolutions (the auxiliary head of the recipes uses 1).
      concat_input: concatenate the input and fuse (mmsegmentation's default).
    """

    num_convs: int = 2
    concat_input: bool = True

    def attention(self) -> nn.Module | None:
        """The block put after the first convolution (named ``attention``); none in FCN."""
        return None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        y = x
        for i in range(self.num_convs):
            y = self.conv_block(3, f"convs_{i}")(y, train=train)
            if i == 0 and (block := self.attention()) is not None:
                y = block(y, train=train)
        if self.concat_input:
            y = self.conv_block(3, "conv_cat")(jnp.concatenate([x.astype(y.dtype), y], -1),
                                               train=train)
        return {"out": self.classifier()(y, train=train)}


@register("ccnet")
class CCHead(FCNHead):
    """CCNet head (Huang et al., ICCV 2019; mmsegmentation's ``CCHead``): recurrent
    criss-cross attention, ``recurrence`` passes of one shared block (R = 2 in the paper)."""

    recurrence: int = 2

    def attention(self) -> nn.Module:
        return blocks.CrissCrossAttention(self.channels, recurrence=self.recurrence,
                                          name="attention", **self.kw)


@register("nonlocal")
class NLHead(FCNHead):
    """Non-local head (Wang et al., CVPR 2018; mmsegmentation's ``NLHead``): an embedded-Gaussian
    non-local block with BN after its output conv. ``memory_efficient`` computes it without the
    ``N x N`` map (exact)."""

    memory_efficient: bool = False

    def attention(self) -> nn.Module:
        return blocks.NonLocal2d(self.channels, norm=True, memory_efficient=self.memory_efficient,
                                 name="attention", **self.kw)


@register("gcnet")
class GCHead(FCNHead):
    """GCNet head (Cao et al., ICCVW 2019; mmsegmentation's ``GCHead``): a global context
    block with attention pooling, reduction 1/4 and the channel-add fusion only, its
    LayerNorm with PyTorch's eps 1e-5 (mmcv's ``ContextBlock``)."""

    def attention(self) -> nn.Module:
        return blocks.GlobalContext(self.channels, fuse_add=True, fuse_scale=False,
                                    rd_ratio=0.25, norm_eps=1e-5, name="attention", **self.kw)


class PolarizedHead(FCNHead):
    """Polarized self-attention head (Liu et al., 2021): a PSA block in the FCN head,
    ``mode`` ``"parallel"`` (registered as ``psa``) or ``"sequential"`` (``psas``)."""

    mode: str = "parallel"

    def attention(self) -> nn.Module:
        return blocks.PolarizedSelfAttention(self.channels, mode=self.mode, name="attention",
                                             **self.kw)


def _sequential_polarized_head(**kwargs: Any) -> PolarizedHead:
    """:class:`PolarizedHead` in the sequential layout."""
    return PolarizedHead(**{"mode": "sequential", **kwargs})


register("psa")(PolarizedHead)
register("psas")(_sequential_polarized_head)
