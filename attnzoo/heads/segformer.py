"""SegFormer's all-MLP decode head (Xie et al., NeurIPS 2021, Sec. 3.2)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_rank
from attnzoo.blocks.common import ConvNormAct
from attnzoo.heads.base import DecodeHead, register

Array = jax.Array


@register("segformer")
class SegFormerHead(DecodeHead):
    """The all-MLP decoder over the four encoder stages (eq. (4)):

        F_i = Upsample_{H/4 x W/4}(Linear(C_i, C)(F_i)),
        F = ReLU(BN(Linear(4C, C)(Concat(F_4, F_3, F_2, F_1)))),   M = Linear(C, K)(F).

    ``channels`` is ``C`` (256 for B0/B1, 768 for B2-B5 in the paper and on the
    Hugging Face hub; mmseg's recipes use 256 for all). The upsampling is
    bilinear to the stride-4 size (PyTorch's ``F.interpolate``, ``align_corners``
    as the field). ``stage_norm=True`` is mmseg's variant: each per-stage
    projection is a 1x1 conv + BN + ReLU (``ConvModule``) instead of a linear
    layer with bias. The classifier is channel dropout + 1x1 conv (mmseg's
    ``cls_seg``; Hugging Face drops single activations, in training only).

    Submodules ``proj_0`` .. ``proj_3``, ``fuse`` (concatenation deepest first,
    as the paper's code and Hugging Face's), ``cls``. Called with the list of the
    four features ``[c1, c2, c3, c4]``.
    """

    channels: int = 256
    stage_norm: bool = False

    def check_input(self, x: Sequence[Array]) -> None:
        """``x`` must be a list of NHWC features, the finest first."""
        if isinstance(x, jax.Array) or not isinstance(x, Sequence) or not x:
            raise ValueError("the segformer head reads a list of backbone features (the "
                             "model's in_feature must be a tuple such as ('c1', 'c2', 'c3', "
                             f"'c4')); got {type(x).__name__}")
        for i, f in enumerate(x):
            check_rank(f, 4, f"features[{i}]", "B, H, W, C")

    @nn.compact
    def __call__(self, x: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        size = x[0].shape[1:3]
        projected = []
        for i, feature in enumerate(x):
            y = ConvNormAct(self.channels, 1, norm=self.stage_norm,
                            act="relu" if self.stage_norm else None,
                            use_bias=not self.stage_norm, name=f"proj_{i}", **self.kw)(
                                feature, train=train)
            projected.append(ops.interpolate(y, size, align_corners=self.align_corners))
        fused = self.conv_block(1, "fuse")(jnp.concatenate(projected[::-1], axis=-1),
                                           train=train)
        return {"out": self.classifier()(fused, train=train)}
