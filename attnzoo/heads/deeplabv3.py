"""ASPP head of DeepLabV3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image
Segmentation", 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo.blocks.common import global_avg_pool
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


@register("aspp")
class ASPPHead(DecodeHead):
    """Atrous spatial pyramid pooling (mmsegmentation's ``ASPPHead``).

    An image-pooling branch (global average pool, 1x1 conv-BN-ReLU, broadcast
    back) and one branch per rate in ``dilations`` (1x1 for rate 1, 3x3
    dilated otherwise), concatenated and fused by a 3x3 bottleneck conv.

    Attributes:
      dilations: the rates; (1, 12, 24, 36) for output stride 8.
    """

    dilations: Sequence[int] = (1, 12, 24, 36)

    def aspp_branch(self, dilation: int, name: str) -> nn.Module:
        """The branch of rate ``dilation``: a 1x1 or 3x3 dilated conv-BN-ReLU."""
        return self.conv_block(1 if dilation == 1 else 3, name, dilation=dilation)

    def aspp(self, x: Array, train: bool) -> Array:
        """The image pool and the branches, concatenated and fused by the 3x3 bottleneck
        (called inside the compact ``__call__``)."""
        pooled = self.conv_block(1, "image_pool")(global_avg_pool(x), train=train)
        branches = [jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,))]
        for i, d in enumerate(self.dilations):
            branches.append(self.aspp_branch(d, f"aspp_{i}")(x, train=train))
        return self.bottleneck(branches, train)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        return {"out": self.classifier()(self.aspp(x, train), train=train)}


register_family(Family(
    name="deeplabv3", head="aspp",
    summary="atrous spatial pyramid pooling (Chen et al., 2017)",
    mmseg_renames=((r"^image_pool\.1\.", "image_pool."),
                   (r"^aspp_modules\.(\d+)\.", r"aspp.\1."))))
