"""ANN head (Zhu et al., "Asymmetric Non-local Neural Networks for Semantic Segmentation",
ICCV 2019; mmseg's ``ANNHead``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import blocks
from attnzoo.blocks.common import ConvNormAct
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


@register("ann")
class ANNHead(DecodeHead):
    """Asymmetric non-local: attention whose keys and values are a pyramid of pooled bins
    (``key_pool_scales``: ``1 + 9 + 36 + 64 = 110`` keys instead of ``H W``), twice
    (:class:`~attnzoo.blocks.SelfAttentionBlock` with ``key_pool_scales``):

    * the fusion block (AFNB): queries from the high-level features ``c4``, keys and values
      from the low-level ``c3``; its output concatenated with ``c4`` and fused by a 1x1
      conv-BN (no activation) of ``c4``'s width (``fusion_bottleneck``);
    * channel dropout, a 3x3 conv-BN-ReLU of ``channels`` (``bottleneck``);
    * the context block (APNB): self-attention of those features (one projection for the
      queries and the keys), concatenated with them and fused by a 1x1 conv-BN-ReLU
      (``context_bottleneck``); then the classifier.

    mmseg's ``query_scales`` is ``(1,)`` in every config (its code fails for others), so each
    block has one stage. The head reads ``[c3, c4]`` (the family's ``in_feature``).

    Attributes:
      project_channels: the query / key width of both blocks (256 in mmseg's configs).
      key_pool_scales: the pyramid's bins per side ((1, 3, 6, 8)).
      memory_efficient: the attentions' exact memory-bounded path.
    """

    project_channels: int = 256
    key_pool_scales: Sequence[int] = (1, 3, 6, 8)
    memory_efficient: bool = False

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        self.check_features(feats, ("c3", "c4"))
        low, high = feats
        attention: dict[str, Any] = dict(
            inter_channels=self.project_channels, key_query_convs=1, out_project=True,
            key_pool_scales=tuple(self.key_pool_scales), memory_efficient=self.memory_efficient,
            **self.kw)
        width = high.shape[-1]
        context = blocks.SelfAttentionBlock(width, context_channels=low.shape[-1], name="fusion",
                                            **attention)(high, low, train=train)
        y = ConvNormAct(width, act=None, name="fusion_bottleneck", **self.kw)(
            jnp.concatenate([context, high], -1), train=train)
        y = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(y)
        y = self.conv_block(3, "bottleneck")(y, train=train)
        context = blocks.SelfAttentionBlock(self.channels, share_key_query=True, name="context",
                                            **attention)(y, train=train)
        y = self.conv_block(1, "context_bottleneck")(jnp.concatenate([context, y], -1),
                                                      train=train)
        return {"out": self.classifier()(y, train=train)}


_SHARED = "decode_head.context.stages.0.query_project."


def _drop_shared_query_projection(state_dict: dict[str, Any]) -> dict[str, Any]:
    """mmseg's APNB holds its one key / query projection under both names: keep
    ``key_project``, after checking that ``query_project`` is the same weights."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(_SHARED):
            twin = key.replace(".query_project.", ".key_project.")
            if twin not in state_dict or not np.array_equal(value, state_dict[twin]):
                raise ValueError(f"{key!r} is not a copy of {twin!r}: not an mmseg ANNHead "
                                 "(its context block shares one projection for queries and keys)")
        else:
            out[key] = value
    return out


register_family(Family(
    name="ann", head="ann", in_feature=("c3", "c4"),
    summary="asymmetric non-local: pyramid-pooled keys, fusion (c3 -> c4) and context blocks "
            "(Zhu et al., ICCV 2019)",
    mmseg_renames=((r"^(fusion|context)\.stages\.0\.", r"\1."),
                   (r"^(fusion|context)\.bottleneck\.", r"\1_bottleneck.")),
    mmseg_state_dict=_drop_shared_query_projection))
