"""timm / torchvision ResNet-family and HRNet state dicts -> attnzoo backbones, and checkpoints
of them.

HRNet: timm's ``hrnet_*`` files and mmseg's ImageNet initialisations
(``open-mmlab://msra/hrnetv2_w18`` and the like, the official HRNet's ImageNet models) keep the
official HRNet's key names, which mmseg's ``HRNet`` loads by name: both convert as
``from_timm("hrnet_w18", state_dict)`` (their classification heads, ``incre_modules``,
``downsamp_modules``, ``final_layer`` and ``classifier``, are dropped).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import backbones
from attnzoo._checks import module_fields
from attnzoo.backbones.vit import resize_pos_embed
from attnzoo.convert.torch_weights import convert_state_dict, target_shapes, to_numpy

# Classifier keys of the references (ResNets' ``fc``, HRNet's classification head): not part of
# a segmentation backbone.
_BACKBONE_KEYS = r"^(?!(fc|classifier|incre_modules|downsamp_modules|final_layer)\.)"
# timm names the attention module of a residual block ``se`` whatever its kind; attnzoo ``attn``.
_TIMM_RENAMES = ((r"^(layer\d+\.\d+)\.se\.", r"\1.attn."),)
# timm's Swin names: swin_<size>_patch4_window<M>_<224|384> (attnzoo's swin_<t|s|b|l>[_w12])
_TIMM_SWIN = re.compile(r"swin_(tiny|small|base|large)_patch4_window(7|12)_(224|384)")
# timm's ViT / DeiT names: <vit|deit>_<size>_patch16_<224|384>[.<tag>] (attnzoo's vit_<t|s|b|l>16)
_TIMM_VIT = re.compile(r"(?:vit|deit)_(tiny|small|base|large)_patch16_(224|384)(?:\.[a-z0-9_]+)?")
META_FILE = "attnzoo_backbone.json"


def timm_backbone(model_name: str) -> tuple[str, dict[str, Any]]:
    """attnzoo backbone name and fields that rebuild timm's ``model_name``."""
    m = re.fullmatch(r"(se|eca)?resnet(18|34|50|101|152)([cd]?)", model_name)
    if m:
        kwargs: dict[str, Any] = {"attn": m[1]} if m[1] else {}
        return f"resnet{m[2]}_{ {'': 'v1b', 'c': 'v1c', 'd': 'v1d'}[m[3]] }", kwargs
    if re.fullmatch(r"vit_base_r50_s16_(224|384)(\.[a-z0-9_]+)?", model_name):
        size = int(model_name.split(".")[0][-3:])
        return "r50_vit_b16", {"img_size": (size, size)}
    m = re.fullmatch(r"twins_(pcpvt|svt)_(small|base|large)", model_name)
    if m:
        return f"{m[1]}_{m[2][0]}", {}
    m = _TIMM_VIT.fullmatch(model_name)
    if m and not (model_name.startswith("deit") and m[1] == "large"):
        return f"vit_{m[1][0]}16", {"img_size": (int(m[2]), int(m[2]))}
    m = _TIMM_SWIN.fullmatch(model_name)
    name = f"swin_{m[1][0]}{'_w12' if m[2] == '12' else ''}" if m else model_name
    if name in backbones.list_backbones() and re.match(r"skresnet|resnest|hrnet_|swin_", name):
        return name, {}
    raise ValueError(
        f"model_name={model_name!r} is not a timm model attnzoo can rebuild; supported: "
        "[se|eca]resnet{18,34,50,101,152}[c|d], skresnet{18,34,50}, resnest{14,26,50}d, "
        "resnest101e, hrnet_w18_small[_v2], hrnet_w{18,30,32,40,44,48,64}, "
        "swin_{tiny,small,base,large}_patch4_window7_224, swin_{base,large}_patch4_window12_384, "
        "vit_{tiny,small,base,large}_patch16_{224,384}, deit_{tiny,small,base}_patch16_{224,384}, "
        "vit_base_r50_s16_384, twins_{pcpvt,svt}_{small,base,large}"
    )


def _unfold_order(array: np.ndarray) -> np.ndarray:
    """timm's patch-merging channel order (``(dx, dy, c)``, offset-major) on the last axis as
    mmseg's ``nn.Unfold`` order (``(c, dy, dx)``, channel-major), which attnzoo's Swin uses."""
    *lead, four_c = array.shape
    parts = array.reshape(*lead, 2, 2, four_c // 4)
    return np.moveaxis(parts, (-3, -2, -1), (-1, -2, -3)).reshape(*lead, four_c)


def _timm_swin_state_dict(state_dict: Mapping[str, Any], module: nn.Module) -> dict[str, Any]:
    """timm's Swin keys as attnzoo's: ``layers.<i>.blocks`` are ``stages.<i>.blocks``; timm's
    merging at the start of stage ``i`` is attnzoo's ``downsample_<i-1>`` (its channels
    reordered, :func:`_unfold_order`); the classifier's ``norm`` and ``head`` are dropped; the
    per-stage output norms, which timm's classifier lacks, start as identity affine maps (ones
    and zeros), as mmseg initialises them when it loads ImageNet Swin weights."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith(("head.", "norm.")):
            continue
        merging = re.fullmatch(r"layers\.(\d+)\.downsample\.(norm|reduction)\.(weight|bias)", key)
        if merging:
            key = f"downsample_{int(merging[1]) - 1}.{merging[2]}.{merging[3]}"
            value = _unfold_order(to_numpy(value))
        key = re.sub(r"^patch_embed\.proj\.", "patch_embed_projection.", key)
        key = re.sub(r"^patch_embed\.norm\.", "patch_embed_norm.", key)
        out[re.sub(r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks.", key)] = value
    for i, (channels, _) in enumerate(module.feature_info().values()):
        out[f"norm{i}.weight"] = np.ones(channels, np.float32)
        out[f"norm{i}.bias"] = np.zeros(channels, np.float32)
    return out


def _timm_vit_state_dict(state_dict: Mapping[str, Any], module: nn.Module) -> dict[str, Any]:
    """timm's ViT / DeiT keys as attnzoo's, as mmseg's ``vit2mmseg`` and ``VisionTransformer``
    load them: ``blocks.<i>`` are ``layers.<i>`` (``norm1`` / ``norm2`` as ``ln1`` / ``ln2``, the
    stacked ``attn.qkv`` split into ``query`` / ``key`` / ``value``); timm's final ``norm`` is
    the final LayerNorm ``ln1`` of a ``final_norm`` backbone and dropped otherwise, as is the
    classifier (``head``); the position embedding is resized (``module.interpolate_mode``) from
    timm's square grid to the backbone's ``img_size`` grid when they differ; a hybrid's
    ``patch_embed.backbone`` is its ``resnet``."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith(("head.", "fc_norm.")) or (key.startswith("norm.")
                                                      and not module.final_norm):
            continue
        value = to_numpy(value)
        qkv = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key)
        if qkv:
            for part, name in zip(np.split(value, 3, axis=0), ("query", "key", "value")):
                out[f"layers.{qkv[1]}.attn.{name}.{qkv[2]}"] = part
            continue
        if key == "pos_embed":
            side = int(round(np.sqrt(value.shape[1] - 1)))
            value = np.asarray(resize_pos_embed(
                jnp.asarray(value, jnp.float32), (side, side), module.grid,
                module.interpolate_mode))
        key = re.sub(r"^blocks\.(\d+)\.norm(\d)\.", r"layers.\1.ln\2.", key)
        key = re.sub(r"^blocks\.", "layers.", key)
        key = re.sub(r"^norm\.", "ln1.", key)
        key = re.sub(r"^patch_embed\.backbone\.", "resnet.", key)  # the hybrid's ResNet
        out[re.sub(r"^patch_embed\.proj\.", "patch_embed_projection.", key)] = value
    return out


def _timm_twins_state_dict(state_dict: Mapping[str, Any], module: nn.Module) -> dict[str, Any]:
    """timm's Twins keys as attnzoo's (mmseg's): ``blocks`` are ``layers``, ``pos_block.<i>.proj.0``
    ``position_encodings.<i>.proj``, the patch embeddings' ``proj`` ``projection``; a GSA
    layer's ``q`` and stacked ``kv`` are ``query``, ``key``, ``value``. timm's final ``norm``
    (after stage 4) is SVT's ``norm_list_3`` and is dropped for PCPVT, as the classifier; SVT's
    norms after stages 1-3, which timm's classifier lacks, start as identity affine maps (mmseg's
    start when it loads these weights)."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith("head.") or (key.startswith("norm.") and not module.norm_after_stage):
            continue
        value = to_numpy(value)
        kv = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.attn\.kv\.(weight|bias)", key)
        if kv:
            for part, name in zip(np.split(value, 2, axis=0), ("key", "value")):
                out[f"layers.{kv[1]}.{kv[2]}.attn.{name}.{kv[3]}"] = part
            continue
        key = re.sub(r"^blocks\.(\d+\.\d+)\.attn\.q\.", r"layers.\1.attn.query.", key)
        key = re.sub(r"^blocks\.", "layers.", key)
        key = re.sub(r"^pos_block\.(\d+)\.proj\.0\.", r"position_encodings.\1.proj.", key)
        key = re.sub(r"^patch_embeds\.(\d+)\.proj\.", r"patch_embeds.\1.projection.", key)
        out[re.sub(r"^norm\.", "norm_list.3.", key)] = value
    if module.norm_after_stage:
        for i, (channels, _) in enumerate(list(module.feature_info().values())[:3]):
            out[f"norm_list.{i}.weight"] = np.ones(channels, np.float32)
            out[f"norm_list.{i}.bias"] = np.zeros(channels, np.float32)
    return out


def _convert(name: str, kwargs: dict[str, Any], state_dict: Mapping[str, Any],
             output_stride: int) -> tuple[nn.Module, dict]:
    cls = backbones.BACKBONES.get(name)[0]
    if cls is backbones.ResNet:
        kwargs = {**kwargs, "output_stride": output_stride}
    elif output_stride != 32:
        raise ValueError(f"output_stride={output_stride}: {name} has fixed strides (4 to 32, "
                         f"undilated); only 32 applies")
    module = backbones.create(name, **kwargs)
    if cls is backbones.SwinTransformer:
        state_dict = _timm_swin_state_dict(state_dict, module)
    if issubclass(cls, backbones.VisionTransformer):
        state_dict = _timm_vit_state_dict(state_dict, module)
    if cls is backbones.Twins:
        state_dict = _timm_twins_state_dict(state_dict, module)
    target = target_shapes(module, jnp.zeros((1, 64, 64, module.in_channels), jnp.float32))
    return module, convert_state_dict(state_dict, target, strict_regex=_BACKBONE_KEYS,
                                      regex_renames=_TIMM_RENAMES)


def from_timm(model_name: str, state_dict: Mapping[str, Any], output_stride: int = 32,
              fields: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict]:
    """The attnzoo backbone matching timm's ``model_name`` and its variables.

    For the ResNets, ``backbone.apply(variables, x_nhwc)["c4"]`` equals timm's
    ``forward_features`` (NCHW) transposed to NHWC, in eval mode. An HRNet (``hrnet_*``) gets
    the weights of timm's (or the official / mmseg ImageNet file's) trunk; its four branches
    are mmseg's HRNetV2 outputs (timm's classifier fuses them with nearest-neighbour
    upsampling, mmseg and attnzoo bilinearly). A Swin (``swin_<size>_patch4_window<M>_<res>``)
    gets timm's trunk; its stage outputs go through per-stage norms timm lacks, started as
    identity affine maps (mmseg's start when it loads these weights). The classifiers are
    dropped; any other unknown, missing or mis-shaped key raises ``ConversionError``.

    A ViT / DeiT (``<vit|deit>_<size>_patch16_<224|384>``) gets timm's encoder;
    ``fields`` overrides the backbone's fields, as a segmentor fine-tuned from these weights
    builds it (``models.get_spec(name).backbone_kwargs``: mmseg's recipes learn the position
    embedding for their crop, to which timm's is resized bicubically, and may add a final
    norm, which timm's ``norm`` fills, as mmseg's ``vit2mmseg`` and ``VisionTransformer``).
    A Twins (``twins_<pcpvt|svt>_<small|base|large>``) gets timm's trunk (SVT's norms after
    stages 1-3, which timm lacks, start as plain LayerNorms).
    """
    name, kwargs = timm_backbone(model_name)
    return _convert(name, {**kwargs, **(fields or {})}, state_dict, output_stride)


def from_torchvision(model_name: str, state_dict: Mapping[str, Any], output_stride: int = 32
                     ) -> tuple[nn.Module, dict]:
    """The attnzoo backbone matching torchvision's ``resnet{18,...,152}`` and its variables.

    Output stride 8/16 equals torchvision's ``replace_stride_with_dilation``.
    """
    m = re.fullmatch(r"resnet(18|34|50|101|152)", model_name)
    if not m:
        raise ValueError(f"model_name must be torchvision's resnet18..resnet152; got {model_name!r}")
    return _convert(f"resnet{m[1]}_v1b", {}, state_dict, output_stride)


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a ``.safetensors`` (numpy, no torch needed) or ``.pth``/``.pt``/``.bin`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    import torch

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(f"checkpoint {str(path)!r} cannot be read as a PyTorch state dict "
                         f"(truncated, or not a .pth/.pt/.bin file): {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from err
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return dict(sd)


_FIELDS = ("layers", "deep_stem", "stem_width", "avg_down", "output_stride", "multi_grid",
           "cardinality", "base_width", "width", "attn", "attn_kwargs", "block_kwargs",
           "in_channels")
# Files written before the block kinds became classes (attnzoo <= 0.1 at 90627af) hold these
# block fields at the top level; each block kind reads the ones it has.
_LEGACY_BLOCK_FIELDS = ("sk_kwargs", "radix", "avd")


# Backbones other than the ResNet family are saved as their class and fields (``"kind"``).
_KINDS: dict[str, type[nn.Module]] = {"HRNet": backbones.HRNet,
                                      "SwinTransformer": backbones.SwinTransformer,
                                      "VisionTransformer": backbones.VisionTransformer,
                                      "HybridVisionTransformer":
                                          backbones.HybridVisionTransformer,
                                      "Twins": backbones.Twins}


def _backbone_fields(module: nn.Module) -> dict[str, Any]:
    kind = type(module).__name__
    if kind in _KINDS:
        return {"kind": kind, **{f: getattr(module, f) for f in module_fields(type(module))
                                 if f not in ("dtype", "param_dtype")}}
    if not isinstance(module, backbones.ResNet):
        raise ValueError(f"save_backbone writes ResNet-family and {sorted(_KINDS)} backbones; "
                         f"got {kind}")
    names = {cls: name for name, cls in backbones.BLOCKS.items()}
    if module.block_cls not in names:
        raise ValueError(f"block_cls {module.block_cls.__name__} is not one of attnzoo's block "
                         f"kinds {sorted(backbones.BLOCKS)}; it cannot be saved by name")
    return {"block": names[module.block_cls], **{k: getattr(module, k) for k in _FIELDS}}


def _from_fields(meta: dict[str, Any]) -> nn.Module:
    if "kind" not in meta:  # the ResNet family's files (the only ones before HRNet)
        return _resnet_from_fields(meta)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()
              if k not in ("kind", "source")}
    return _KINDS[meta["kind"]](**fields)


def _resnet_from_fields(meta: dict[str, Any]) -> backbones.ResNet:
    fields = {k: v for k, v in meta.items() if k not in ("source", "block", *_LEGACY_BLOCK_FIELDS)}
    block_cls = backbones.BLOCKS[meta["block"]]
    block_kwargs = {k: meta[k] for k in _LEGACY_BLOCK_FIELDS
                    if k in meta and k in block_cls.__dataclass_fields__}
    block_kwargs.update(dict(fields.get("block_kwargs", ())))
    if "sk_kwargs" in block_kwargs:
        block_kwargs["sk_kwargs"] = tuple(tuple(item) for item in block_kwargs["sk_kwargs"])
    fields["block_kwargs"] = tuple(sorted(block_kwargs.items()))
    fields["attn_kwargs"] = tuple(tuple(item) for item in fields["attn_kwargs"])
    fields["layers"] = tuple(fields["layers"])
    return backbones.ResNet(block_cls=block_cls, **fields)


def save_backbone(directory: str | Path, module: nn.Module, variables: dict,
                  source: str = "") -> Path:
    """Write ``variables`` as an orbax checkpoint and the backbone's fields as JSON beside it."""
    import orbax.checkpoint as ocp

    meta = {**_backbone_fields(module), "source": source}
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "variables", variables, force=True)
        ckptr.wait_until_finished()
    (directory / META_FILE).write_text(json.dumps(meta, indent=1, default=list))
    return directory


def load_backbone(directory: str | Path) -> tuple[nn.Module, dict]:
    """Restore what :func:`save_backbone` wrote: ``(backbone, variables)``."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{str(directory)!r} holds no {META_FILE}: not an attnzoo backbone")
    module = _from_fields(json.loads(meta_path.read_text()))
    target = target_shapes(module, jnp.zeros((1, 64, 64, module.in_channels), jnp.float32))
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(directory / "variables", target)
    return module, jax.tree.map(jnp.asarray, variables)
