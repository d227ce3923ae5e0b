"""Backbones: dilated ResNets with attention inside, by registry name.

``create("resnet50_v1c", output_stride=8, attn="se")``; ``list_backbones()``.
Names: ``resnet{18,34,50,101,152}_v1{b,c,d}``, ``skresnet{18,34,50}``,
``resnest{14,26,50,101}d``/``resnest101e``. Keyword arguments override any
field of :class:`ResNet` (``output_stride``, ``multi_grid``, ``attn``,
``attn_kwargs``, ``frozen_bn``, ``dtype``, ...).
"""

from __future__ import annotations

from typing import Any

from attnzoo._checks import check_choice
from attnzoo.backbones.resnet import ResNet, ResidualBlock

_DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
           50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
           152: ("bottleneck", (3, 8, 36, 3))}
_VARIANTS = {"v1b": {}, "v1c": {"deep_stem": True}, "v1d": {"deep_stem": True, "avg_down": True}}

_BACKBONES: dict[str, dict[str, Any]] = {}
for _depth, (_block, _layers) in _DEPTHS.items():
    for _variant, _kw in _VARIANTS.items():
        _BACKBONES[f"resnet{_depth}_{_variant}"] = dict(block=_block, layers=_layers, **_kw)
# SK-ResNet (Li et al. 2019) as timm builds it.
_BACKBONES["skresnet18"] = dict(block="sk_basic", layers=(2, 2, 2, 2), sk_kwargs=(
    ("rd_ratio", 1 / 8), ("rd_divisor", 16), ("split_input", True)))
_BACKBONES["skresnet34"] = dict(block="sk_basic", layers=(3, 4, 6, 3), sk_kwargs=(
    ("rd_ratio", 1 / 8), ("rd_divisor", 16), ("split_input", True)))
_BACKBONES["skresnet50"] = dict(block="sk_bottleneck", layers=(3, 4, 6, 3), sk_kwargs=(
    ("split_input", True),))
# ResNeSt (Zhang et al. 2022): deep stem, average-pool shortcuts, radix 2, avd.
for _name, _layers, _stem in (("resnest14d", (1, 1, 1, 1), 32), ("resnest26d", (2, 2, 2, 2), 32),
                              ("resnest50d", (3, 4, 6, 3), 32), ("resnest101e", (3, 4, 23, 3), 64)):
    _BACKBONES[_name] = dict(block="resnest", layers=_layers, deep_stem=True, stem_width=_stem,
                             avg_down=True)


def create(name: str, /, **kwargs: Any) -> ResNet:
    """Build backbone ``name``; ``kwargs`` override its fields (e.g. ``output_stride=8``)."""
    check_choice(name, sorted(_BACKBONES), "name")
    if isinstance(kwargs.get("attn_kwargs"), dict):
        kwargs["attn_kwargs"] = tuple(sorted(kwargs["attn_kwargs"].items()))
    return ResNet(**{**_BACKBONES[name], **kwargs})


def list_backbones() -> list[str]:
    """All registered backbone names, sorted."""
    return sorted(_BACKBONES)


__all__ = ["ResNet", "ResidualBlock", "create", "list_backbones"]
