"""Backbones by registry name: dilated ResNets with attention inside, and Mix Transformers.

``create("resnet50_v1c", output_stride=8, attn="se")``, ``create("mit_b2")``;
``list_backbones()``. Names: ``resnet{18,34,50,101,152}_v1{b,c,d}``,
``skresnet{18,34,50}``, ``resnest{14,26,50}d``/``resnest101e`` (fields of
:class:`ResNet`: ``output_stride``, ``multi_grid``, ``attn``, ``attn_kwargs``,
``frozen_bn``, ``block_cls``, ``dtype``, ...), ``mit_b0`` .. ``mit_b5``
(fields of :class:`MixVisionTransformer`) and timm's HRNets ``hrnet_w18_small``,
``hrnet_w18_small_v2``, ``hrnet_w{18,30,32,40,44,48,64}`` (fields of :class:`HRNet`; mmseg's
HRNetV2-W18-small, -W18 and -W48 are ``hrnet_w18_small_v2``, ``hrnet_w18``, ``hrnet_w48``)
the Swin Transformers ``swin_{t,s,b,l}`` (window 7) and ``swin_{b,l}_w12`` (fields of
:class:`SwinTransformer`) and the Vision Transformers ``vit_{t,s,b,l}16`` (fields of
:class:`VisionTransformer`; DeiT-S / -B are ``vit_s16`` / ``vit_b16``) and the Twins
``pcpvt_{s,b,l}`` / ``svt_{s,b,l}`` (fields of :class:`Twins`) and the R50+ViT-B/16 hybrid
``r50_vit_b16`` (fields of :class:`HybridVisionTransformer`). Keyword arguments
override any field. Every backbone returns ``{"c1": ..., "c4": ...}`` (a ViT one feature per
``out_indices`` entry, all of stride 16) and has ``feature_info()`` and ``in_channels``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from attnzoo._checks import check_fields, module_fields
from attnzoo._registry import Registry, check_module_contract, doc_summary
from attnzoo.backbones.hrnet import HRModule, HRNet
from attnzoo.backbones.swin import PatchMerging, SwinBlock, SwinTransformer
from attnzoo.backbones.twins import Twins
from attnzoo.backbones.resnetv2 import ResNetV2
from attnzoo.backbones.vit import (
    HybridVisionTransformer,
    VisionTransformer,
    match_layer_form,
    stack_layers,
    unstack_layers,
)
from attnzoo.backbones.mit import MixFFN, MiTBlock, MixVisionTransformer, OverlapPatchEmbed
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



def _check_backbone(name: str, entry: tuple[type[nn.Module], dict[str, Any]]) -> None:
    cls, defaults = entry
    what = f"backbone {name!r} ({getattr(cls, '__name__', cls)})"
    check_module_contract(what, cls, ("dtype", "param_dtype"), "attnzoo.backbones.register")
    check_fields(defaults, module_fields(cls), what)
    if not callable(getattr(cls, "feature_info", None)):
        raise ValueError(f"{what}: a backbone has a feature_info() method (its features' "
                         "names -> (channels, stride)); see help(attnzoo.backbones.register)")


def _describe_backbone(entry: tuple[type[nn.Module], dict[str, Any]]) -> str:
    cls, defaults = entry
    doc = doc_summary(cls)
    settings = ", ".join(f"{k}={v}" for k, v in defaults.items() if not callable(v))
    return f"{doc} ({settings})" if settings else doc


BACKBONES: Registry[tuple[type[nn.Module], dict[str, Any]]] = Registry(
    "backbone", check=_check_backbone, describe=_describe_backbone)


def register(name: str, cls: type[nn.Module], **defaults: Any) -> None:
    """Register backbone class ``cls`` as ``name``, built with the fields ``defaults`` unless
    :func:`create`'s keywords override them.

    The contract, checked here (ValueError saying what is missing): a ``flax.linen.Module``
    class with the fields ``dtype`` and ``param_dtype`` (and every key of ``defaults``), whose
    ``__call__(images, *, train=False)`` takes the keyword ``train`` and returns a dict of
    NHWC features (``{"c1": ..., "c4": ...}``), with a ``feature_info()`` method giving each
    feature's ``(channels, stride)``.
    """
    BACKBONES.add(name, (cls, defaults))

_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
           152: (Bottleneck, (3, 8, 36, 3))}
_VARIANTS = {"v1b": {}, "v1c": {"deep_stem": True}, "v1d": {"deep_stem": True, "avg_down": True}}
for _depth, (_block, _layers) in _DEPTHS.items():
    for _variant, _kw in _VARIANTS.items():
        BACKBONES.add(f"resnet{_depth}_{_variant}",
                      (ResNet, dict(block_cls=_block, layers=_layers, **_kw)))
# SK-ResNet (Li et al. 2019) as timm builds it.
_SK_BASIC = (("rd_ratio", 1 / 8), ("rd_divisor", 16), ("split_input", True))
for _depth, _block, _sk in ((18, SelectiveKernelBasic, _SK_BASIC),
                            (34, SelectiveKernelBasic, _SK_BASIC),
                            (50, SelectiveKernelBottleneck, (("split_input", True),))):
    BACKBONES.add(f"skresnet{_depth}", (ResNet, dict(
        block_cls=_block, layers=_DEPTHS[_depth][1], block_kwargs=(("sk_kwargs", _sk),))))
# ResNeSt (Zhang et al. 2022): deep stem, average-pool shortcuts, radix 2, avd.
for _name, _layers, _stem in (("resnest14d", (1, 1, 1, 1), 32), ("resnest26d", (2, 2, 2, 2), 32),
                              ("resnest50d", (3, 4, 6, 3), 32), ("resnest101e", (3, 4, 23, 3), 64)):
    BACKBONES.add(_name, (ResNet, dict(block_cls=ResNeStBottleneck, layers=_layers,
                                       deep_stem=True, stem_width=_stem, avg_down=True)))
# MiT (SegFormer, Table 6): B0 is 32-64-160-256 wide, B1-B5 64-128-320-512, deeper with the index.
for _name, _dims, _depths in (("mit_b0", (32, 64, 160, 256), (2, 2, 2, 2)),
                              ("mit_b1", (64, 128, 320, 512), (2, 2, 2, 2)),
                              ("mit_b2", (64, 128, 320, 512), (3, 4, 6, 3)),
                              ("mit_b3", (64, 128, 320, 512), (3, 4, 18, 3)),
                              ("mit_b4", (64, 128, 320, 512), (3, 8, 27, 3)),
                              ("mit_b5", (64, 128, 320, 512), (3, 6, 40, 3))):
    BACKBONES.add(_name, (MixVisionTransformer, dict(embed_dims=_dims, depths=_depths)))
# HRNet (Wang et al., TPAMI 2020), timm's configurations: W<k> has branches k, 2k, 4k, 8k wide
# with 1, 1, 4, 3 modules of 4 blocks per stage; the small ones fewer (v2 is mmseg's W18-small).
BACKBONES.add("hrnet_w18_small", (HRNet, dict(
    widths=(16, 32, 64, 128), num_modules=(1, 1, 1, 1), num_blocks=(1, 2, 2, 2),
    stage1_planes=32)))
BACKBONES.add("hrnet_w18_small_v2", (HRNet, dict(
    widths=(18, 36, 72, 144), num_modules=(1, 1, 3, 2), num_blocks=(2, 2, 2, 2))))
for _k in (18, 30, 32, 40, 44, 48, 64):
    BACKBONES.add(f"hrnet_w{_k}", (HRNet, dict(widths=(_k, 2 * _k, 4 * _k, 8 * _k))))
# Swin (Liu et al., ICCV 2021, Table 1 / mmseg's upernet_swin configs): T/S/B/L; window 7, and
# 12 for the B / L models pretrained at 384.
_SWINS = {"t": (96, (2, 2, 6, 2), (3, 6, 12, 24)), "s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
          "b": (128, (2, 2, 18, 2), (4, 8, 16, 32)), "l": (192, (2, 2, 18, 2), (6, 12, 24, 48))}
for _size, (_dim, _depths, _heads) in _SWINS.items():
    for _window, _suffix in ((7, ""), (12, "_w12")):
        if _window == 12 and _size in "ts":
            continue
        BACKBONES.add(f"swin_{_size}{_suffix}", (SwinTransformer, dict(
            embed_dim=_dim, depths=_depths, num_heads=_heads, window_size=_window)))

# ViT (Dosovitskiy et al., ICLR 2021, Table 1; Ti / S from DeiT, Touvron et al. 2021): patch 16,
# the position embedding on timm's 224 x 224 grid (mmseg's recipes set their crop).
_VITS = {"t": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}
for _size, (_dim, _depth, _heads) in _VITS.items():
    BACKBONES.add(f"vit_{_size}16", (VisionTransformer, dict(
        embed_dim=_dim, depth=_depth, num_heads=_heads,
        out_indices=tuple(range(_depth // 4 - 1, _depth, _depth // 4)))))
# the R50+ViT-B/16 hybrid (ViT paper; TransUNet's encoder), its position embedding for 224 x 224
BACKBONES.add("r50_vit_b16", (HybridVisionTransformer, dict(img_size=(224, 224))))

# Twins (Chu et al., NeurIPS 2021, Table 1 / mmseg's twins configs): PCPVT-S / B / L differ in
# depth; SVT-S / B / L in width and depth, with LSA groups of 7 and a norm after each stage.
for _size, _depths in (("s", (3, 4, 6, 3)), ("b", (3, 4, 18, 3)), ("l", (3, 8, 27, 3))):
    BACKBONES.add(f"pcpvt_{_size}", (Twins, dict(depths=_depths)))
for _size, _dims, _heads, _depths in (
        ("s", (64, 128, 256, 512), (2, 4, 8, 16), (2, 2, 10, 4)),
        ("b", (96, 192, 384, 768), (3, 6, 12, 24), (2, 2, 18, 2)),
        ("l", (128, 256, 512, 1024), (4, 8, 16, 32), (2, 2, 18, 2))):
    BACKBONES.add(f"svt_{_size}", (Twins, dict(
        embed_dims=_dims, num_heads=_heads, depths=_depths, mlp_ratios=(4, 4, 4, 4),
        window_sizes=(7, 7, 7, 7), norm_after_stage=True)))


def create(name: str, /, **kwargs: Any) -> nn.Module:
    """Build backbone ``name``; ``kwargs`` override its fields (e.g. ``output_stride=8``;
    ``attn_kwargs`` and ``block_kwargs`` may be dicts). ValueError names the fields a
    keyword does not match."""
    cls, defaults = BACKBONES.get(name)
    fields = {**defaults, **kwargs}
    check_fields(fields, [*module_fields(cls), "name"], f"backbone {name!r} ({cls.__name__})")
    for key, value in fields.items():
        if key in ("attn_kwargs", "block_kwargs") and isinstance(value, dict):
            fields[key] = tuple(sorted(value.items()))
        elif isinstance(value, list):  # sequences from a JSON config
            fields[key] = tuple(value)
    return cls(**fields)


def list_backbones(pattern: str = "*", *, describe: bool = False
                   ) -> list[str] | dict[str, str]:
    """The registered backbone names matching ``pattern`` (shell-style, ``"swin_*"``), sorted;
    with ``describe``, a dict name -> the backbone's class and settings, one line."""
    return BACKBONES.listing(pattern, describe)


__all__ = ["BACKBONES", "BLOCKS", "BasicBlock", "Bottleneck", "HRModule", "HRNet",
           "HybridVisionTransformer", "MiTBlock", "MixFFN", "MixVisionTransformer",
           "OverlapPatchEmbed", "PatchMerging", "ResNeStBottleneck", "ResNet", "ResNetV2",
           "ResidualBlock", "SelectiveKernelBasic", "SelectiveKernelBottleneck", "SwinBlock",
           "SwinTransformer", "Twins", "VisionTransformer", "create", "list_backbones",
           "match_layer_form", "register", "stack_layers", "unstack_layers"]


def __dir__() -> list[str]:
    """The public names (``__all__``), not the submodules: what tab completion offers."""
    return sorted(__all__)
