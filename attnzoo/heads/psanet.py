"""PSANet head (Zhao et al., "PSANet: Point-wise Spatial Attention Network for Scene
Parsing", ECCV 2018)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo.blocks.common import ConvNormAct, conv
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


@register("psanet")
class PSANetHead(DecodeHead):
    """Bi-directional point-wise spatial attention (mmsegmentation's ``PSAHead``, ``psa_type=
    'bi-direction'``, ``compact=False``).

    Two branches reduce the input with a 1x1 conv-BN-ReLU to ``channels`` and
    shrink it by ``shrink_factor`` (bilinear; ``align_corners=True`` with
    ``(h - 1) // s + 1`` when both sides are odd, as mmseg); each predicts at
    every position an over-complete ``mask_size`` map (1x1 conv-BN-ReLU, 1x1
    conv without bias) that :func:`attnzoo.ops.point_wise_spatial_attention`
    turns into the collect and the distribute aggregation (paper eq. 9-10).
    Their concatenation is projected back to the input width (``proj``: a 1x1
    conv with padding 1, as mmseg), resized to the input size, concatenated
    with the input and fused by a 3x3 conv-BN-ReLU (``bottleneck``).

    Attributes:
      mask_size: ``(Hm, Wm)`` of the over-complete map; ``2h - 1`` of the
        shrunk training features covers the whole map from any position
        (97 for 512x1024 crops at output stride 8, 66 for ADE20K's 512x512).
      shrink_factor: downsampling of the features before the attention.
      normalization: the aggregated features are divided by it.
    """

    mask_size: tuple[int, int] = (97, 97)
    shrink_factor: int = 2
    normalization: float = 1.0

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        hm, wm = self.mask_size
        h, w = x.shape[1:3]
        align_corners = self.align_corners
        if self.shrink_factor != 1:
            s = self.shrink_factor
            if h % s and w % s:
                h, w, align_corners = (h - 1) // s + 1, (w - 1) // s + 1, True
            else:
                h, w = h // s, w // s
        branches = []
        for mode, suffix in (("collect", ""), ("distribute", "_p")):
            y = self.conv_block(1, f"reduce{suffix}")(x, train=train)
            y = ops.resize_bilinear(y, (h, w), align_corners=align_corners)
            mask = self.conv_block(1, f"attention{suffix}_0")(y, train=train)
            mask = conv(hm * wm, use_bias=False, name=f"attention{suffix}_1", **self.kw)(mask)
            branches.append(ops.point_wise_spatial_attention(
                y, mask, self.mask_size, mode, normalization=self.normalization))
        out = ConvNormAct(x.shape[-1], 1, padding=1, name="proj", **self.kw)(
            jnp.concatenate(branches, -1), train=train)
        out = ops.resize_bilinear(out, x.shape[1:3], align_corners=align_corners)
        y = self.conv_block(3, "bottleneck")(jnp.concatenate([x, out.astype(x.dtype)], -1),
                                             train=train)
        return {"out": self.classifier()(y, train=train)}


# mask sizes: mmseg's psanet configs set (97, 97) on Cityscapes and VOC, (66, 66) on ADE20K; the
# quickstart's 128 x 128 crops give 16 x 16 features shrunk to 8 x 8, whose 2h - 1 is 15
register_family(Family(
    name="psanet", head="psanet",
    summary="point-wise spatial attention, collect and distribute (Zhao et al., ECCV 2018)",
    quickstart={"head_kwargs": {"mask_size": (15, 15)}},
    mmseg_renames=(),
    mmseg_head_kwargs={"cityscapes": {"mask_size": (97, 97)}, "voc12aug": {"mask_size": (97, 97)},
                       "ade20k": {"mask_size": (66, 66)}}))
