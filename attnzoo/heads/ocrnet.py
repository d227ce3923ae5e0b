"""OCRNet head (Yuan et al., "Object-Contextual Representations for Semantic Segmentation",
ECCV 2020; mmseg's cascade of ``FCNHead`` and ``OCRHead``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import blocks, ops
from attnzoo.heads.base import DecodeHead, Family, register, register_family
from attnzoo.heads.fcn import FCNHead

Array = jax.Array


@register("ocrnet")
class OCRHead(DecodeHead):
    """Object-contextual representations, the two stages of mmseg's cascade in one head:

    * soft object regions: an FCN head on ``c3`` (one conv-BN-ReLU of ``region_channels``
      and its classifier; ``region_head``), class logits ``l`` (in training also output as
      ``"regions"``, loss weight 0.4);
    * pixel features ``x``: a 3x3 conv-BN-ReLU of ``c4`` to ``channels`` (``bottleneck``);
    * object region representations ``f_k`` (:func:`attnzoo.ops.spatial_gather`), and each
      pixel's object context: attention of the pixels (queries) over the ``K`` regions (keys and values;
      :class:`~attnzoo.blocks.SelfAttentionBlock` with two conv-BN-ReLU per query / key
      projection of ``ocr_channels``, conv-BN-ReLU value and out projections), concatenated
      with ``x`` and fused by a 1x1 conv-BN-ReLU (``object_context_bottleneck``); then the
      classifier.

    The head reads ``[c3, c4]`` (the family's ``in_feature``) on ResNets, or one array for both
    (HRNet's concatenated branches); OCRNet's models have no other auxiliary head.

    Attributes:
      ocr_channels: the attention's query / key width (256).
      region_channels: the region head's width (default ``channels // 2``: mmseg's 256 for
        512).
      region_kernel_size: of the region head's conv (3; 1 on HRNet).
      scale: of the region logits in the spatial softmax (1).
      memory_efficient: the attention's exact memory-bounded path.
    """

    ocr_channels: int = 256
    region_channels: int | None = None
    region_kernel_size: int = 3
    scale: float = 1.0
    memory_efficient: bool = False

    branches: ClassVar[tuple[tuple[str, float], ...]] = (("regions", 0.4),)

    @nn.compact
    def __call__(self, feats: Sequence[Array] | Array, *, train: bool = False
                 ) -> dict[str, Array]:
        if isinstance(feats, jax.Array):
            self.check_input(feats)
            low = high = feats
        else:
            self.check_features(feats, ("c3", "c4"))
            low, high = feats
        regions = FCNHead(self.num_classes, self.region_channels or self.channels // 2,
                          self.dropout, num_convs=1, concat_input=False,
                          kernel_size=self.region_kernel_size, name="region_head",
                          **self.kw)(low, train=train)["out"]
        x = self.conv_block(3, "bottleneck")(high, train=train)
        objects = ops.spatial_gather(x, regions, self.scale).astype(x.dtype)
        context = blocks.SelfAttentionBlock(
            self.channels, inter_channels=self.ocr_channels, key_query_convs=2, value_norm=True,
            out_project=True, memory_efficient=self.memory_efficient, name="object_context",
            **self.kw)(x, objects[:, :, None, :], train=train)
        y = self.conv_block(1, "object_context_bottleneck")(jnp.concatenate([context, x], -1),
                                                             train=train)
        out = {"out": self.classifier()(y, train=train)}
        if train or self.is_initializing():
            out["regions"] = regions
        return out


def hrnet_head(width: int) -> dict[str, int | float]:
    """On HRNet (mmseg's ``ocrnet_hr18.py``): the region head a 1x1 conv as wide as the
    concatenated branches; no dropout."""
    return dict(region_channels=width, region_kernel_size=1, dropout=0.0)


register_family(Family(
    name="ocrnet", head="ocrnet", in_feature=("c3", "c4"), auxiliary=False,
    model_sets=("resnet", "hrnet"), set_head_kwargs={"hrnet": hrnet_head},
    summary="object-contextual representations: pixels attend to soft object regions "
            "(Yuan et al., ECCV 2020)",
    mmseg_renames=((r"^0\.conv_seg\.", "region_head.cls.conv_seg."),
                   (r"^0\.", "region_head."),
                   (r"^1\.object_context_block\.bottleneck\.", "object_context_bottleneck."),
                   (r"^1\.object_context_block\.", "object_context."),
                   (r"^1\.", ""))))
