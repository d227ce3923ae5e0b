"""DANet head (Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019)."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from attnzoo import blocks
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


@register("danet")
class DANetHead(DecodeHead):
    """Position and channel attention branches, summed (mmsegmentation's ``DAHead``).

    Each branch reduces the input with a 3x3 conv-BN-ReLU to ``channels``
    (C/4 of 2048 = 512), applies its attention and another 3x3 conv:

        PAM: E_j = gamma sum_i softmax_i(Q_i . K_j) V_i + A_j        (paper eq. 2)
        CAM: E_j = beta sum_i softmax_i(max(X X^T) - X X^T)_ji A_i + A_j   (eq. 4)

    The main classifier reads their sum; in training (and at init) each
    branch also has its own classifier, whose logits ``"pam"`` and ``"cam"``
    the paper and mmsegmentation add to the loss with weight 1.

    Attributes:
      pam_channels: query/key width of PAM (default ``channels // 8``, 64 for 512).
      memory_efficient: PAM through the exact memory-bounded path (whole-image
        inference at 1024x2048).
    """

    pam_channels: int | None = None
    memory_efficient: bool = False

    branches: ClassVar[tuple[tuple[str, float], ...]] = (("pam", 1.0), ("cam", 1.0))

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        key_channels = self.channels // 8 if self.pam_channels is None else self.pam_channels
        p = self.conv_block(3, "pam_in_conv")(x, train=train)
        p = blocks.PositionAttention(self.channels, key_channels=key_channels,
                                     memory_efficient=self.memory_efficient, name="pam",
                                     **self.kw)(p)
        p = self.conv_block(3, "pam_out_conv")(p, train=train)
        c = self.conv_block(3, "cam_in_conv")(x, train=train)
        c = blocks.ChannelAttention(self.channels, name="cam", **self.kw)(c)
        c = self.conv_block(3, "cam_out_conv")(c, train=train)
        out = {"out": self.classifier()(p + c, train=train)}
        pam_cls, cam_cls = self.classifier("pam_cls"), self.classifier("cam_cls")
        if train or self.is_initializing():
            out["pam"] = pam_cls(p, train=train)
            out["cam"] = cam_cls(c, train=train)
        return out


register_family(Family(
    name="danet", head="danet",
    summary="position and channel attention, summed (Fu et al., CVPR 2019)",
    mmseg_renames=((r"^(pam|cam)_conv_seg\.", r"\1_cls.conv_seg."),
                   (r"^pam\.(query|key|value)_project\.", r"pam.\1_conv."))))
