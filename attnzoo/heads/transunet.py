"""TransUNet's decoder (Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical
Image Segmentation", 2021, Sec. 3.2 and Fig. 1: the cascaded upsampler, CUP): the U-Net half of
a U-Net whose encoder is the R50+ViT hybrid."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo.blocks.common import ConvNormAct, conv
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


@register("cup")
class CascadedUpsampler(DecodeHead):
    """The cascaded upsampler: the encoder's last map (the ViT's, stride 16) through a 3x3
    conv-BN-ReLU of ``channels`` (``conv_more``), then one decoder block per entry of
    ``decoder_channels`` (``blocks_<i>``): bilinear upsampling (``align_corners=True``, as the
    reference's ``UpsamplingBilinear2d``) to the next skip feature's size (x2: strides 8, 4,
    2), concatenation with it (the encoder's earlier features, deepest first; blocks past the
    skips, TransUNet's last, have none and upsample x2), two 3x3 conv-BN-ReLU (``conv1``, ``conv2``); then a 3x3 conv to
    the classes (``segmentation_head``). Reads the encoder's features finest first (the
    hybrid's ``c1`` .. ``c4``).

    Attributes:
      decoder_channels: the blocks' widths ((256, 128, 64, 16)).
    """

    dropout: float = 0.0
    decoder_channels: Sequence[int] = (256, 128, 64, 16)

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        self.check_features(feats, ("c1", "c2", "c3", "c4"), exact=False)
        *skips, x = feats
        skips = skips[::-1]
        if len(self.decoder_channels) < len(skips):
            raise ValueError(f"the CascadedUpsampler has {len(self.decoder_channels)} blocks "
                             f"(decoder_channels) for {len(skips)} skip features: it needs a "
                             f"block per skip")
        x = self.conv_block(3, "conv_more")(x, train=train)
        for i, width in enumerate(self.decoder_channels):
            if i < len(skips):
                x = ops.resize_bilinear(x, skips[i].shape[1:3], align_corners=True)
                x = jnp.concatenate([x, skips[i].astype(x.dtype)], -1)
            else:
                h, w = x.shape[1:3]
                x = ops.resize_bilinear(x, (2 * h, 2 * w), align_corners=True)
            for name in ("conv1", "conv2"):
                x = self.block(width, f"blocks_{i}_{name}")(x, train=train)
        return {"out": conv(self.num_classes, 3, name="segmentation_head", **self.kw)(x)}

    def block(self, width: int, name: str) -> nn.Module:
        """A 3x3 conv-BN-ReLU of ``width`` (call inside the compact ``__call__``)."""
        return ConvNormAct(width, 3, name=name, **self.kw)


# TransUNet's training (its train.py): SGD at 0.01, momentum 0.9, weight decay 1e-4, poly decay
# (power 0.9) to 0
register_family(Family(
    name="transunet", head="cup",
    summary="U-Net with a Transformer encoder: R50+ViT hybrid and a cascaded upsampler with "
            "skip connections (Chen et al., 2021)",
    model_sets=("hybrid",), in_feature=("c1", "c2", "c3", "c4"), auxiliary=False,
    recipe={"optimizer.learning_rate": 0.01, "optimizer.weight_decay": 1e-4,
            "optimizer.min_lr": 0.0}))
