"""SETR (Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence
Perspective with Transformers", CVPR 2021): a ViT's layers decoded by progressive upsampling
(naive, PUP) or multi-level feature aggregation (MLA), as mmsegmentation's ``SETRUPHead``,
``SETRMLAHead`` and ``MLANeck``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_positive
from attnzoo.blocks.common import ConvNormAct, Dtype
from attnzoo.heads.base import DecodeHead, Family, register, register_family
from attnzoo.heads.necks import NECKS

Array = jax.Array

LN_EPS = 1e-6  # mmseg's SETR norms (norm_layer=dict(type="LN", eps=1e-6))


@register("setr_up")
class SETRUpHead(DecodeHead):
    """SETR's upsampling decoder (Sec. 3.3): LayerNorm over the channels of a ViT layer's
    ``(B, H/16, W/16, C)`` map (``norm``), then ``num_convs`` times a conv-BN-ReLU of
    ``channels`` (``up_convs_<i>_0``) and a bilinear ``up_scale`` x upsampling, then the
    classifier. SETR-naive: one 1x1 conv, x4 (the logits then upsampled to the input);
    SETR-PUP (progressive upsampling): four 3x3 convs, x2 each.

    Attributes:
      num_convs: conv-upsampling steps.
      up_scale: each step's upsampling factor.
      kernel_size: of the convs (1 or 3).
    """

    dropout: float = 0.0
    num_convs: int = 1
    up_scale: int = 4
    kernel_size: int = 1

    def __post_init__(self) -> None:
        check_positive(self.num_convs, "num_convs")
        check_positive(self.up_scale, "up_scale")
        if self.kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3; got {self.kernel_size}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        x = nn.LayerNorm(LN_EPS, name="norm", **self.kw)(x)
        for i in range(self.num_convs):
            x = self.conv_block(self.kernel_size, f"up_convs_{i}_0")(x, train=train)
            x = upsample(x, self.up_scale, self.align_corners)
        return {"out": self.classifier()(x, train=train)}


def upsample(x: Array, scale: int, align_corners: bool) -> Array:
    """``nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=...)`` of NHWC ``x``
    (an integer factor: the sizes' ratio is the factor)."""
    h, w = x.shape[1:3]
    return ops.resize_bilinear(x, (h * scale, w * scale), align_corners=align_corners)


@register("setr_mla")
class SETRMLAHead(DecodeHead):
    """SETR-MLA's decoder (Sec. 3.3, Fig. 1(c)): each of the MLA neck's levels through two 3x3
    conv-BN-ReLU of ``mla_channels`` (``up_convs_<i>_0``, ``up_convs_<i>_1``) and a bilinear
    ``up_scale`` x upsampling; the levels concatenated (``channels = levels x mla_channels``)
    and classified.

    Attributes:
      mla_channels: width of each level's convs.
      up_scale: their upsampling factor.
    """

    channels: int = 512
    dropout: float = 0.0
    mla_channels: int = 128
    up_scale: int = 4

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        self.check_features(feats, ("c1", "c2", "c3", "c4"), exact=False)
        if self.channels != len(feats) * self.mla_channels:
            raise ValueError(f"channels ({self.channels}) must be the levels ({len(feats)}) "
                             f"times mla_channels ({self.mla_channels})")
        outs = []
        for i, x in enumerate(feats):
            for j in range(2):
                x = ConvNormAct(self.mla_channels, 3, name=f"up_convs_{i}_{j}", **self.kw)(
                    x, train=train)
            outs.append(upsample(x, self.up_scale, self.align_corners))
        return {"out": self.classifier()(jnp.concatenate(outs, -1), train=train)}


class MLAModule(nn.Module):
    """MLA's aggregation: each level projected by a 1x1 conv-BN-ReLU (``channel_proj_<i>``),
    summed top-down from the deepest (``m_k = p_L + ... + p_{L-k}``) and each sum through a
    3x3 conv-BN-ReLU (``feat_extract_<k>``); outputs deepest first, as mmseg's."""

    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[Array], *, train: bool = False) -> list[Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        projected = [ConvNormAct(self.out_channels, 1, name=f"channel_proj_{i}", **kw)(
            x, train=train) for i, x in enumerate(feats)]
        outs, total = [], None
        for k, p in enumerate(projected[::-1]):
            total = p if total is None else total + p
            outs.append(ConvNormAct(self.out_channels, 3, name=f"feat_extract_{k}", **kw)(
                total, train=train))
        return outs


@NECKS.register("mla")
class MLANeck(nn.Module):
    """SETR's multi-level feature aggregation neck (mmseg's ``MLANeck``): each ViT layer's map
    through its own LayerNorm over channels (``norm_<i>``), then :class:`MLAModule` (``mla``).
    Returns ``c1`` .. ``c<L>``, ``c1`` the aggregation that starts (and ends) at the deepest
    layer.

    Attributes:
      out_channels: width of every output (256).
    """

    out_channels: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Mapping[str, Array], *, train: bool = False) -> dict[str, Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        normed = [nn.LayerNorm(LN_EPS, name=f"norm_{i}", **kw)(x)
                  for i, x in enumerate(feats.values())]
        outs = MLAModule(self.out_channels, name="mla", **kw)(normed, train=train)
        return {f"c{i + 1}": x for i, x in enumerate(outs)}


def _mmseg_fields(model: str, protocol: Mapping[str, Any]) -> dict[str, Any]:
    """What mmseg's setr configs set beyond their dataset's: sliding-window testing; on ADE20K
    SETR-naive's auxiliary heads have two convs; SETR-MLA trains at 1e-3 (ADE20K) / 2e-3
    (Cityscapes)."""
    fields: dict[str, Any] = {"eval.mode": "slide"}
    if model.endswith("_naive") and protocol["dataset"] == "ade20k":
        fields["model.aux_kwargs"] = {"num_convs": 2}
    if model.endswith("_mla"):
        fields["optimizer.learning_rate"] = 1e-3 if protocol["dataset"] == "ade20k" else 2e-3
    return fields


# mmseg's setr configs: SGD (the schedule's 0.01, momentum 0.9) without weight decay, the heads
# at 10x (its paramwise_cfg "head" key: the decode and auxiliary heads; the zoo's models name
# theirs)
register_family(Family(
    name="setr", head="setr_up",
    summary="a ViT's layers decoded by progressive upsampling or multi-level aggregation "
            "(Zheng et al., CVPR 2021)",
    model_sets=("setr",), in_feature="c4",
    recipe={"optimizer.weight_decay": 0.0},
    mmseg_renames=(), mmseg_fields=_mmseg_fields))
