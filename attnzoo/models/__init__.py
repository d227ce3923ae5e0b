"""Segmentation models by recipe name (mmsegmentation's naming).

``create("danet_r50_d8", num_classes=19)``, ``list_models()``. ``<head>_r<depth>_d<stride>``
builds an :class:`EncoderDecoder` on a ResNet-v1c backbone (deep stem, as
mmsegmentation's ResNetV1c) at output stride 8 or 16 with an auxiliary FCN
head on stage 3 (weight 0.4). Heads: ``fcn``, ``danet``, ``ccnet`` (R=2),
``nonlocal``, ``psa`` (polarized self-attention, parallel; ``psas``
sequential), ``gcnet``, ``deeplabv3`` (ASPP). r18 models use the narrower
heads of mmsegmentation's r18 recipes (128 channels, aux 64). Keyword
arguments: ``num_classes`` (required), ``backbone_kwargs`` (e.g.
``{"attn": "se", "frozen_bn": True}``), ``head_kwargs``,
``memory_efficient`` (DANet / non-local: exact memory-bounded attention),
``head_channels`` / ``aux_channels`` (override the recipe's head widths,
e.g. for a narrow CPU-sized model with ``backbone_kwargs={"width": 16}``),
``dtype``.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attnzoo import backbones
from attnzoo._checks import check_choice, check_positive
from attnzoo.heads import ASPPHead, DANetHead, FCNHead
from attnzoo.models.segmentor import AttentionUNet, EncoderDecoder, resize_logits

HEADS = ("fcn", "danet", "ccnet", "nonlocal", "psa", "psas", "gcnet", "deeplabv3")
DEPTHS = (18, 50, 101)
STRIDES = (8, 16)


def _head(kind: str, num_classes: int, channels: int, memory_efficient: bool, kw: dict,
          extra: dict) -> nn.Module:
    attention = {
        "ccnet": ("cca", (("recurrence", 2),)),
        "nonlocal": ("non_local", (("norm", True), ("memory_efficient", memory_efficient))),
        "psa": ("psa_p", ()),
        "psas": ("psa_s", ()),
        "gcnet": ("gc", (("fuse_add", True), ("fuse_scale", False), ("rd_ratio", 0.25))),
    }
    if kind == "danet":
        return DANetHead(num_classes, channels, pam_channels=channels // 8,
                         memory_efficient=memory_efficient, **kw, **extra)
    if kind == "deeplabv3":
        return ASPPHead(num_classes, channels, **kw, **extra)
    if kind == "fcn":
        return FCNHead(num_classes, channels, **kw, **extra)
    name, akw = attention[kind]
    return FCNHead(num_classes, channels, attention=name, attention_kwargs=akw, **kw, **extra)


def create(name: str, /, *, num_classes: int, backbone_kwargs: dict | None = None,
           head_kwargs: dict | None = None, memory_efficient: bool = False,
           head_channels: int | None = None, aux_channels: int | None = None,
           dtype: Any = jnp.float32, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` (see the module docstring)."""
    check_choice(name, list_models(), "name")
    check_positive(num_classes, "num_classes")
    kw = dict(dtype=dtype)
    if name == "attention_unet" or name == "attention_unet_small":
        widths = (64, 128, 256, 512, 1024) if name == "attention_unet" else (16, 32, 64, 128)
        return AttentionUNet(num_classes, widths=widths, **kw, **kwargs)
    kind, depth, stride = re.fullmatch(r"([a-z0-9]+)_r(\d+)_d(\d+)", name).groups()
    depth, stride = int(depth), int(stride)
    backbone = backbones.create(f"resnet{depth}_v1c", output_stride=stride, dtype=dtype,
                                **(backbone_kwargs or {}))
    default_channels, default_aux = (128, 64) if depth == 18 else (512, 256)
    channels = default_channels if head_channels is None else head_channels
    aux_channels = default_aux if aux_channels is None else aux_channels
    check_positive(channels, "head_channels")
    check_positive(aux_channels, "aux_channels")
    head = _head(kind, num_classes, channels, memory_efficient, kw, dict(head_kwargs or {}))
    aux = FCNHead(num_classes, aux_channels, num_convs=1, concat_input=False, **kw)
    branches = (("pam", 1.0), ("cam", 1.0)) if kind == "danet" else ()
    return EncoderDecoder(backbone, head, aux, branch_weights=branches, **kwargs)


def list_models() -> list[str]:
    """All registered model names, sorted."""
    names = [f"{h}_r{d}_d{s}" for h in HEADS for d in DEPTHS for s in STRIDES]
    return sorted(names + ["attention_unet", "attention_unet_small"])


__all__ = ["AttentionUNet", "EncoderDecoder", "create", "list_models", "resize_logits"]
