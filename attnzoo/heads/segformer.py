"""SegFormer's all-MLP decode head (Xie et al., NeurIPS 2021, Sec. 3.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import ops
from attnzoo.blocks.common import ConvNormAct
from attnzoo.heads.base import DecodeHead, Family, register, register_family

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

    @nn.compact
    def __call__(self, x: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        self.check_features(x, ("c1", "c2", "c3", "c4"), exact=False)
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


def _fusion_inputs_deepest_first(state_dict: dict[str, Any]) -> dict[str, Any]:
    """mmseg's ``SegformerHead`` concatenates the four stages finest first, attnzoo's (the
    paper's code and Hugging Face's) deepest first: its fusion kernel ``(C, 4 C, 1, 1)`` with
    the four input blocks in reverse order."""
    key = "decode_head.fusion_conv.conv.weight"
    out = dict(state_dict)
    if key in out:
        out[key] = np.concatenate(np.split(np.asarray(out[key]), 4, axis=1)[::-1], axis=1)
    return out


# The paper's recipe (as mmseg's segformer configs): 160k steps of AdamW (lr 6e-5, betas
# 0.9 / 0.999, weight decay 0.01), linear warm-up over 1500 steps, poly decay (power 1) to 0, the
# head at 10x the rate (mmseg's paramwise_cfg), evaluated one image at a time. mmseg's head is
# 256 wide at every size with BN + ReLU per stage (``stage_norm``).
register_family(Family(
    name="segformer", head="segformer",
    summary="Mix Transformer encoder and all-MLP decoder (Xie et al., NeurIPS 2021)",
    model_sets=("mit",),
    recipe={"optimizer.name": "adamw", "optimizer.learning_rate": 6e-5, "optimizer.b1": 0.9,
            "optimizer.b2": 0.999, "optimizer.weight_decay": 0.01, "optimizer.schedule": "poly",
            "optimizer.power": 1.0, "optimizer.min_lr": 0.0, "optimizer.warmup_steps": 1500,
            "optimizer.lr_mult": {"head": 10.0}, "eval_batch_size": 1},
    quickstart={"head_channels": 64},
    mmseg_renames=((r"^convs\.(\d+)\.", r"proj_\1."), (r"^fusion_conv\.", "fuse.")),
    mmseg_head_kwargs={"*": {"channels": 256, "stage_norm": True}},
    mmseg_state_dict=_fusion_inputs_deepest_first))
