"""ISANet head (Huang et al., "Interlaced Sparse Self-Attention for Semantic Segmentation", 2019;
mmseg's ``ISAHead``)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import blocks, ops
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


@register("isanet")
class ISAHead(DecodeHead):
    """Interlaced sparse self-attention: a 3x3 conv-BN-ReLU (``in_conv``), then a long-range
    self-attention among the positions one ``down_factor`` block apart and a short-range one
    inside each block (:func:`attnzoo.ops.interlaced_sparse_attention`; each a
    :class:`~attnzoo.blocks.SelfAttentionBlock` of ``isa_channels``, ``global_relation`` and
    ``local_relation``), concatenated with the ``in_conv`` output and fused by a 1x1
    conv-BN-ReLU (``out_conv``).

    Attributes:
      isa_channels: the query / key width of both attentions (256 in mmseg's configs).
      down_factor: the block size ``(P_h, P_w)`` (8 x 8).
      memory_efficient: the attentions' exact memory-bounded path.
    """

    isa_channels: int = 256
    down_factor: tuple[int, int] = (8, 8)
    memory_efficient: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        x = self.conv_block(3, "in_conv")(x, train=train)
        relation = dict(inter_channels=self.isa_channels, output_conv=True,
                        memory_efficient=self.memory_efficient, **self.kw)
        long_range = blocks.SelfAttentionBlock(self.channels, name="global_relation", **relation)
        short_range = blocks.SelfAttentionBlock(self.channels, name="local_relation", **relation)
        y = ops.interlaced_sparse_attention(x, tuple(self.down_factor),
                                            lambda t: long_range(t, train=train),
                                            lambda t: short_range(t, train=train))
        y = self.conv_block(1, "out_conv")(jnp.concatenate([y, x], -1), train=train)
        return {"out": self.classifier()(y, train=train)}


register_family(Family(
    name="isanet", head="isanet",
    summary="interlaced sparse self-attention, long then short range (Huang et al., 2019)",
    mmseg_renames=((r"^(global|local)_relation\.output_project\.", r"\1_relation.output_conv."),)))
