"""Backbones: dilated ResNets with attention inside, by registry name.

``create("resnet50_v1c", output_stride=8, attn="se")``; ``list_backbones()``.
Names: ``resnet{18,34,50,101,152}_v1{b,c,d}``, ``skresnet{18,34,50}``,
``resnest{14,26,50}d``/``resnest101e``. Keyword arguments override any
field of :class:`ResNet` (``output_stride``, ``multi_grid``, ``attn``,
``attn_kwargs``, ``frozen_bn``, ``block_cls``, ``dtype``, ...).
"""

from __future__ import annotations

from typing import Any

from attnzoo._registry import Registry
from attnzoo.backbones.resnet import (
    BLOCKS,
    BasicBlock,
    Bottleneck,
    ResidualBlock,
    ResNeStBottleneck,
    ResNet,
    SelectiveKernelBasic,
    SelectiveKernelBottleneck,
)

BACKBONES: Registry[dict[str, Any]] = Registry("backbone")

_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
           152: (Bottleneck, (3, 8, 36, 3))}
_VARIANTS = {"v1b": {}, "v1c": {"deep_stem": True}, "v1d": {"deep_stem": True, "avg_down": True}}
for _depth, (_block, _layers) in _DEPTHS.items():
    for _variant, _kw in _VARIANTS.items():
        BACKBONES.add(f"resnet{_depth}_{_variant}", dict(block_cls=_block, layers=_layers, **_kw))
# SK-ResNet (Li et al. 2019) as timm builds it.
_SK_BASIC = (("rd_ratio", 1 / 8), ("rd_divisor", 16), ("split_input", True))
BACKBONES.add("skresnet18", dict(block_cls=SelectiveKernelBasic, layers=(2, 2, 2, 2),
                                 block_kwargs=(("sk_kwargs", _SK_BASIC),)))
BACKBONES.add("skresnet34", dict(block_cls=SelectiveKernelBasic, layers=(3, 4, 6, 3),
                                 block_kwargs=(("sk_kwargs", _SK_BASIC),)))
BACKBONES.add("skresnet50", dict(block_cls=SelectiveKernelBottleneck, layers=(3, 4, 6, 3),
                                 block_kwargs=(("sk_kwargs", (("split_input", True),)),)))
# ResNeSt (Zhang et al. 2022): deep stem, average-pool shortcuts, radix 2, avd.
for _name, _layers, _stem in (("resnest14d", (1, 1, 1, 1), 32), ("resnest26d", (2, 2, 2, 2), 32),
                              ("resnest50d", (3, 4, 6, 3), 32), ("resnest101e", (3, 4, 23, 3), 64)):
    BACKBONES.add(_name, dict(block_cls=ResNeStBottleneck, layers=_layers, deep_stem=True,
                              stem_width=_stem, avg_down=True))


def create(name: str, /, **kwargs: Any) -> ResNet:
    """Build backbone ``name``; ``kwargs`` override its fields (e.g. ``output_stride=8``;
    ``attn_kwargs`` and ``block_kwargs`` may be dicts)."""
    fields = {**BACKBONES.get(name), **kwargs}
    for key in ("attn_kwargs", "block_kwargs"):
        if isinstance(fields.get(key), dict):
            fields[key] = tuple(sorted(fields[key].items()))
    return ResNet(**fields)


def list_backbones() -> list[str]:
    """All registered backbone names, sorted."""
    return BACKBONES.names()


__all__ = ["BACKBONES", "BLOCKS", "BasicBlock", "Bottleneck", "ResNeStBottleneck", "ResNet",
           "ResidualBlock", "SelectiveKernelBasic", "SelectiveKernelBottleneck", "create",
           "list_backbones"]
