"""Flax Linen attention blocks, one family per file, built on :mod:`attnzoo.ops`.

Every block takes ``(x, *, train=False)`` with ``x`` NHWC (``AttentionGate``
also takes the gating signal, ``TemporalAttention`` a ``(B, T, H, W, C)``
clip, ``MultiScaleAttention`` a list of maps and ``DenseCRF`` logits and the RGB image), has ``dtype`` (computation)
and ``param_dtype`` fields, and computes softmaxes and norm statistics in
float32. ``create(name, **kwargs)`` builds one by its registry name.
"""

from attnzoo.blocks.cbam import CBAM
from attnzoo.blocks.common import ConvNormAct, make_divisible
from attnzoo.blocks.coord import CoordinateAttention
from attnzoo.blocks.crf import DenseCRF
from attnzoo.blocks.criss_cross import CrissCrossAttention
from attnzoo.blocks.danet import ChannelAttention, PositionAttention
from attnzoo.blocks.eca import EfficientChannelAttention, eca_kernel_size
from attnzoo.blocks.efficient import SpatialReductionAttention
from attnzoo.blocks.gate import AttentionGate
from attnzoo.blocks.gc import GlobalContext
from attnzoo.blocks.hard import HardAttention
from attnzoo.blocks.mhsa import MultiHeadSelfAttention
from attnzoo.blocks.multiscale import MultiScaleAttention
from attnzoo.blocks.non_local import DisentangledNonLocal2d, NonLocal2d
from attnzoo.blocks.polarized import PolarizedSelfAttention
from attnzoo.blocks.registry import create, get_spec, list_blocks, register
from attnzoo.blocks.scse import SpatialChannelSqueezeExcite
from attnzoo.blocks.se import EffectiveSqueezeExcite, SqueezeExcite
from attnzoo.blocks.self_attention import SelfAttentionBlock
from attnzoo.blocks.sk import SelectiveKernel
from attnzoo.blocks.split import SplitAttention
from attnzoo.blocks.temporal import TemporalAttention
from attnzoo.blocks.transformer import Mlp, TokenSelfAttention, TransformerEncoderLayer
from attnzoo.blocks.window import WindowAttention

__all__ = [
    "AttentionGate",
    "CBAM",
    "ChannelAttention",
    "ConvNormAct",
    "CoordinateAttention",
    "CrissCrossAttention",
    "DenseCRF",
    "DisentangledNonLocal2d",
    "EffectiveSqueezeExcite",
    "EfficientChannelAttention",
    "GlobalContext",
    "HardAttention",
    "Mlp",
    "MultiHeadSelfAttention",
    "MultiScaleAttention",
    "NonLocal2d",
    "PolarizedSelfAttention",
    "PositionAttention",
    "SelectiveKernel",
    "SelfAttentionBlock",
    "SpatialChannelSqueezeExcite",
    "SpatialReductionAttention",
    "SplitAttention",
    "SqueezeExcite",
    "TemporalAttention",
    "TokenSelfAttention",
    "TransformerEncoderLayer",
    "WindowAttention",
    "create",
    "eca_kernel_size",
    "get_spec",
    "list_blocks",
    "make_divisible",
    "register",
]


def __dir__() -> list[str]:
    """The public names (``__all__``), not the submodules: what tab completion offers."""
    return sorted(__all__)
