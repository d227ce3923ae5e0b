"""Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019; mmseg's
``FPN`` neck and ``FPNHead``), the decoder of mmseg's ``sem_fpn`` and Twins models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo.blocks.common import ConvNormAct, Dtype
from attnzoo.heads.base import DecodeHead, Family, register, register_family

Array = jax.Array


class FPN(nn.Module):
    """The feature pyramid (Lin et al., CVPR 2017) as mmseg's ``FPN`` neck with its Semantic FPN
    settings (no norm, no activation, nearest-neighbour top-down upsampling, no extra levels):

        l_i = conv1x1(x_i),   l_i <- l_i + nearest(l_{i+1}) (top-down),   p_i = conv3x3(l_i)

    (convolutions with bias: ``lateral_convs_<i>/conv``, ``fpn_convs_<i>/conv``).

    Attributes:
      features: the pyramid's width (256).
    """

    features: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[Array]) -> list[Array]:
        kw: dict[str, Any] = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        plain = dict(norm=False, act=None, **kw)
        laterals = [ConvNormAct(self.features, 1, name=f"lateral_convs_{i}", **plain)(f)
                    for i, f in enumerate(feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + ops.resize_nearest(
                laterals[i], laterals[i - 1].shape[1:3])
        return [ConvNormAct(self.features, 3, name=f"fpn_convs_{i}", **plain)(lat)
                for i, lat in enumerate(laterals)]


@register("fpn")
class FPNHead(DecodeHead):
    """The :class:`FPN` neck (``neck``) and mmseg's ``FPNHead`` on its levels: level ``i`` of
    stride ``s_i`` through ``max(1, log2(s_i / s_1))`` 3x3 conv-BN-ReLU of ``channels``, each
    followed by 2x bilinear upsampling where ``s_i > s_1`` (``scale_heads_<i>_<2k>``: mmseg's
    ``nn.Sequential`` indices, the upsampling between), the levels resized to the first's size
    and summed, then the classifier. The backbone's levels must be strides ``4 * 2**i``.

    Attributes:
      neck_channels: the FPN's width (256).
    """

    neck_channels: int = 256

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        self.check_features(feats, ("c1", "c2", "c3", "c4"), exact=False)
        levels = FPN(self.neck_channels, name="neck", **self.kw)(feats)
        out = None
        for i, x in enumerate(levels):
            for k in range(max(1, i)):
                x = self.conv_block(3, f"scale_heads_{i}_{2 * k}")(x, train=train)
                if i:
                    x = ops.interpolate(x, (2 * x.shape[1], 2 * x.shape[2]),
                                        align_corners=self.align_corners)
            out = x if out is None else out + ops.interpolate(x, out.shape[1:3],
                                                             align_corners=self.align_corners)
        return {"out": self.classifier()(out, train=train)}


def _neck_into_head(state_dict: dict[str, Any]) -> dict[str, Any]:
    """mmseg keeps the FPN neck beside the decode head (``neck.*``); attnzoo's head holds it."""
    return {("decode_head." + k if k.startswith("neck.") else k): v
            for k, v in state_dict.items()}


def _head_kwargs(_: int) -> dict[str, int]:
    """mmseg's Semantic FPN: the head 128 wide (its neck 256) whatever the backbone."""
    return {"channels": 128}


# mmseg's twins_*_fpn_fpnhead configs: AdamW at 1e-4, weight decay 1e-4, no warm-up, the 80k
# schedule's poly decay (power 0.9 to 1e-4)
TWINS_RECIPE = {"optimizer.name": "adamw", "optimizer.learning_rate": 1e-4,
                "optimizer.weight_decay": 1e-4, "optimizer.warmup_steps": 0,
                "optimizer.power": 0.9, "optimizer.min_lr": 1e-4}

register_family(Family(
    name="fpn", head="fpn", model_sets=("resnet_fpn", "twins"), in_feature=("c1", "c2", "c3", "c4"),
    auxiliary=False, set_head_kwargs={"resnet_fpn": _head_kwargs, "twins": _head_kwargs},
    set_recipe={"twins": TWINS_RECIPE},
    quickstart={"head_kwargs": {"neck_channels": 32}},
    summary="Semantic FPN: a feature pyramid whose levels are upsampled and summed "
            "(Kirillov et al., CVPR 2019)",
    mmseg_state_dict=_neck_into_head, mmseg_renames=()))

