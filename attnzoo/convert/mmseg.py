"""mmsegmentation's trained segmentors -> attnzoo models and variables.

``from_mmseg("danet_r50-d8_4xb2-80k_cityscapes-512x1024", state_dict)`` gives
``(model, variables)`` whose full-resolution logits equal mmseg's
``encode_decode`` (tested against mmseg's own model code). The config stem is
mmseg's config file name, ``<family>_<backbone>_<gpus>xb<batch>-<iterations>k_<dataset>-<crop>``:
it fixes the model (``<family>_<backbone>`` with ``-`` read as ``_``: ``danet_r50_d8``), the
head fields mmseg's config sets (the family's :attr:`~attnzoo.heads.Family.mmseg_head_kwargs`,
``align_corners`` of the 769x769 recipes), the classes, the schedule and the evaluation
protocol (:data:`PROTOCOLS`). Keys map by name after the renames every family shares (below)
and the family's own (``heads.get_family(name).mmseg_renames``, scoped to its decode head);
every key must be used.

The checkpoints mmseg publishes for the supported families are data:
``mmseg_checkpoints.csv`` beside this module (:func:`published_checkpoints`), generated from
mmseg's ``configs/*/metafile.yaml`` by ``tools/mmseg_checkpoints.py``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attnzoo import backbones, heads, models
from attnzoo.blocks.transformer import layer_renames
from attnzoo.convert.torch_weights import convert_state_dict, target_shapes, to_numpy
from attnzoo.data.datasets import spec

# mmseg's dataset configs: classes, crop, test-time resize (keep ratio), inference mode and
# window stride; the 769x769 Cityscapes recipes resize with align_corners=True
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cityscapes-512x1024": dict(dataset="cityscapes", num_classes=19, crop=(512, 1024),
                                scale=(2048, 1024), mode="whole", stride=(341, 682),
                                align_corners=False),
    "cityscapes-769x769": dict(dataset="cityscapes", num_classes=19, crop=(769, 769),
                               scale=(2049, 1025), mode="slide", stride=(513, 513),
                               align_corners=True),
    "cityscapes-768x768": dict(dataset="cityscapes", num_classes=19, crop=(768, 768),
                               scale=(2049, 1025), mode="whole", stride=(512, 512),
                               align_corners=False),
    "ade20k-512x512": dict(dataset="ade20k", num_classes=150, crop=(512, 512), scale=(2048, 512),
                           mode="whole", stride=(341, 341), align_corners=False),
    # SegFormer's: 1024x1024 windows of stride 768 on Cityscapes; ADE20K at 640 (the B5 recipe
    # tests at 2048x640, as at 512)
    "cityscapes-1024x1024": dict(dataset="cityscapes", num_classes=19, crop=(1024, 1024),
                                 scale=(2048, 1024), mode="slide", stride=(768, 768),
                                 align_corners=False),
    "ade20k-640x640": dict(dataset="ade20k", num_classes=150, crop=(640, 640), scale=(2048, 640),
                           mode="whole", stride=(426, 426), align_corners=False),
    # VOC 2012 + SBD, Pascal Context (60 with the background, 59 without: 480x480 windows of
    # stride 320 on images resized to fit 520x520) and COCO-Stuff
    "voc12aug-512x512": dict(dataset="voc12aug", num_classes=21, crop=(512, 512),
                             scale=(2048, 512), mode="whole", stride=(341, 341),
                             align_corners=False),
    "pascal-context-480x480": dict(dataset="pascal_context", num_classes=60, crop=(480, 480),
                                   scale=(520, 520), mode="slide", stride=(320, 320),
                                   align_corners=False),
    "pascal-context-59-480x480": dict(dataset="pascal_context_59", num_classes=59,
                                      crop=(480, 480), scale=(520, 520), mode="slide",
                                      stride=(320, 320), align_corners=False),
    "coco-stuff164k-512x512": dict(dataset="coco_stuff164k", num_classes=171, crop=(512, 512),
                                   scale=(2048, 512), mode="whole", stride=(341, 341),
                                   align_corners=False),
    "coco-stuff10k-512x512": dict(dataset="coco_stuff10k", num_classes=171, crop=(512, 512),
                                  scale=(2048, 512), mode="whole", stride=(341, 341),
                                  align_corners=False),
}
# the largest label of each dataset whose images differ in size (evaluated one at a time at
# their resized size, the logits resized back to the label's original size, as mmseg): ADE20K's
# go up to 2048 pixels a side, VOC's and Pascal Context's 500, COCO's 640
LABEL_CANVAS = {"ade20k": (2048, 2048), "voc12aug": (512, 512), "pascal_context": (512, 512),
                "pascal_context_59": (512, 512), "coco_stuff164k": (640, 640),
                "coco_stuff10k": (640, 640)}

_STEM = re.compile(r"(?P<family>[a-z0-9]+)_(?P<backbone>[a-z0-9_-]+?)_(?P<gpus>\d+)xb(?P<batch>\d+)"
                   r"-(?P<iterations>\d+)k_(?P<protocol>[a-z0-9-]+-\d+x\d+)")
# the Swin configs name the backbone (and its ImageNet pretraining) first:
# swin-<size>-patch4-window<M>-<in1k|in22k>[-384x384]-pre_<family>_<gpus>xb<batch>-..., the
# model <family>_swin_<t|s|b|l>[_w12]
_SWIN_STEM = re.compile(r"swin-(?P<size>tiny|small|base|large)-patch4-window(?P<window>7|12)"
                        r"-in(?:1|22)k(?:-384x384)?-pre_(?P<family>[a-z0-9]+)_(?P<gpus>\d+)xb"
                        r"(?P<batch>\d+)-(?P<iterations>\d+)k_(?P<protocol>[a-z0-9]+-\d+x\d+)")
# the ViT-UPerNet configs (folder vit) name the backbone first too:
# vit_<vit|deit>-<size>16[-ln][_mln]_<family>_..., the model <family>_<vit|deit>_<size>16[_ln][_mln]
_VIT_STEM = re.compile(r"vit_(?P<backbone>(?:vit|deit)-[a-z]\d+(?:-ln)?(?:_mln)?)_"
                       r"(?P<family>[a-z0-9]+)_(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<iterations>\d+)k_"
                       r"(?P<protocol>[a-z0-9]+-\d+x\d+)")

# the Mask2Former Swin-B / L configs name the backbone's 384 x 384 pretraining after it:
# <family>_swin-<b|l>-<in1k|in22k>-384x384-pre_<gpus>xb<batch>-..., the model
# <family>_swin_<b|l>_w12 (window 12)
_PRETRAINED_SWIN_STEM = re.compile(r"(?P<family>[a-z0-9]+)_swin-(?P<size>[bl])-in(?:1|22)k-384x384"
                                   r"-pre_(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<iterations>\d+)k_"
                                   r"(?P<protocol>[a-z0-9]+-\d+x\d+)")

# What every family shares. Backbones: ResNetV1c's deep stem (timm's conv1.* / bn1; its basic
# blocks leave their second conv undilated: ``mmseg_recipe``) and mmseg's MixVisionTransformer
# (after split_in_proj) and SwinTransformer; no pattern matches another's keys. HRNet's keys
# need none (its submodules are named as mmseg's).
BACKBONE_RENAMES = (
    (r"^backbone\.stem\.7\.", "backbone.bn1."),
    (r"^backbone\.stem\.", "backbone.conv1."),
    (r"^backbone\.layers\.(\d+)\.0\.projection\.", r"backbone.patch_embed_\1.proj."),
    (r"^backbone\.layers\.(\d+)\.0\.norm\.", r"backbone.patch_embed_\1.norm."),
    (r"^backbone\.layers\.(\d+)\.1\.(\d+)\.", r"backbone.block_\1_\2."),
    (r"^backbone\.layers\.(\d+)\.2\.(weight|bias)$", r"backbone.norm_\1.\2"),
    (r"^(backbone\.block_\d+_\d+)\.attn\.attn\.out_proj\.", r"\1.attn.proj."),
    (r"^(backbone\.block_\d+_\d+)\.attn\.attn\.(query|key|value)\.", r"\1.attn.\2."),
    (r"^(backbone\.block_\d+_\d+)\.ffn\.layers\.0\.", r"\1.mlp.fc1."),
    (r"^(backbone\.block_\d+_\d+)\.ffn\.layers\.1\.", r"\1.mlp.dwconv."),
    (r"^(backbone\.block_\d+_\d+)\.ffn\.layers\.4\.", r"\1.mlp.fc2."),
    # Swin
    (r"^backbone\.patch_embed\.(projection|norm)\.", r"backbone.patch_embed_\1."),
    (r"^backbone\.stages\.(\d+)\.downsample\.", r"backbone.downsample_\1."),
    (r"^(backbone\.stages\.\d+\.blocks\.\d+\.attn)\.w_msa\.", r"\1."),
    (r"^(backbone\.stages\.\d+\.blocks\.\d+)\.ffn\.layers\.0\.0\.", r"\1.mlp.fc1."),
    (r"^(backbone\.stages\.\d+\.blocks\.\d+)\.ffn\.layers\.1\.", r"\1.mlp.fc2."),
    # ViT (its patch embedding's by Swin's rename above) and mmseg's MultiLevelNeck
    *layer_renames(r"backbone\.layers\.\d+\."),
    # Twins (its GSA layers' attention and every layer's MLP)
    *layer_renames(r"backbone\.layers\.\d+\.\d+\."),
    (r"^neck\.(lateral_convs|convs)\.(\d+)\.conv\.", r"neck.\1.\2."),
)
# Heads: the decode and auxiliary heads' prefixes and classifiers (``cls_seg``), mmcv's Scale.
HEAD_RENAMES = (
    (r"^decode_head\.", "head."),
    (r"^auxiliary_head\.", "aux_head."),
    (r"^(head|aux_head(?:\.\d+)?)\.conv_seg\.", r"\1.cls.conv_seg."),
    (r"\.gamma\.scale$", ".gamma"),
)

# the Twins configs (folder twins): twins_<pcpvt|svt>-<s|b|l>_<fpn_fpnhead|uperhead>_..., the
# model <fpn|upernet>_<pcpvt|svt>_<s|b|l>
_TWINS_STEM = re.compile(r"twins_(?P<net>pcpvt|svt)-(?P<size>[sbl])_(?P<head>fpn_fpnhead|uperhead)"
                         r"_(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<iterations>\d+)k_"
                         r"(?P<protocol>[a-z0-9]+-\d+x\d+)")
_TWINS_FAMILIES = {"fpn_fpnhead": "fpn", "uperhead": "upernet"}

# configs whose name contradicts their dataset file: the protocol and config fields they have.
# mmseg's Segmenter-L config is named for ADE20K 512x512 but reads ade20k_640x640.py (640 crops,
# images resized to 2560 x 640 for training and testing).
_CONFIG_SLIPS: dict[str, tuple[str, dict[str, Any]]] = {
    "segmenter_vit-l_mask_8xb1-160k_ade20k-512x512": (
        "ade20k-640x640", {"dataset.scale": (2560, 640), "dataset.eval_scale": (2560, 640)})}

# the columns of mmseg_checkpoints.csv
FIELDS = ("family", "config", "dataset", "crop", "schedule", "checkpoint", "miou", "miou_ms")
CHECKPOINTS_FILE = Path(__file__).with_name("mmseg_checkpoints.csv")


@dataclasses.dataclass(frozen=True)
class MmsegRecipe:
    """What an mmseg config stem fixes.

    Attributes:
      stem: the config file's stem.
      family: the head family (``heads.list_families()``).
      model: the attnzoo model name (``danet_r50_d8``).
      model_kwargs: ``models.create`` overrides (the head fields mmseg's config sets,
        ``align_corners``, mmseg's undilated second conv in ResNet-18/34's basic blocks).
      protocol: the :data:`PROTOCOLS` key (``"cityscapes-512x1024"``).
      iterations: the schedule's length in steps.
      batch_size: the global batch (GPUs x images per GPU).
      fields: engine config fields beyond the protocol's: the family's and the model's recipes
        (``heads.Family.recipe``, ``EncoderDecoderSpec.recipe``: optimiser, pixel
        normalisation), the family's own (``heads.Family.mmseg_fields``) and a config's
        own dataset settings where its name contradicts them.
    """

    stem: str
    family: str
    model: str
    model_kwargs: Mapping[str, Any]
    protocol: str
    iterations: int
    batch_size: int
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def dataset(self) -> str:
        """The dataset (``"cityscapes"``, ``"ade20k"``)."""
        return PROTOCOLS[self.protocol]["dataset"]

    @property
    def crop(self) -> str:
        """The training crop as mmseg writes it (``"512x1024"``)."""
        return self.protocol.rpartition("-")[2]

    @property
    def schedule(self) -> str:
        """The schedule as mmseg writes it (``"80k"``)."""
        return f"{self.iterations // 1000}k"

    def config_fields(self) -> dict[str, Any]:
        """The engine config fields (dotted names) that evaluate and fine-tune this model as
        mmseg does: model, schedule (iterations and batch as the config's name states),
        :func:`protocol_fields` (set ``dataset.eval_canvas`` to batch ADE20K's images on a
        padded canvas) and the dataset's class names (mmseg's)."""
        return {"model.name": self.model,
                "model.align_corners": bool(self.model_kwargs.get("align_corners", False)),
                "model.backbone_kwargs": dict(self.model_kwargs.get("backbone_kwargs", {})),
                "model.head_kwargs": dict(self.model_kwargs.get("head_kwargs", {})),
                "model.aux_kwargs": dict(self.model_kwargs.get("aux_kwargs", {})),
                "num_steps": self.iterations, "batch_size": self.batch_size,
                **protocol_fields(self.protocol), **self.fields,
                "dataset.class_names": spec(PROTOCOLS[self.protocol]["dataset"]).classes}


def protocol_fields(protocol: str) -> dict[str, Any]:
    """The engine config fields (dotted names) of mmseg dataset protocol ``protocol`` (a
    :data:`PROTOCOLS` key): dataset, classes, crop, test resize, inference mode; the images of
    datasets whose images differ in size (ADE20K, VOC, Pascal Context, COCO-Stuff) one at a
    time at their resized size, the logits resized back to each label's original size
    (``eval_batch_size`` 1, ``eval_label_canvas`` :data:`LABEL_CANVAS`)."""
    p = PROTOCOLS[protocol]
    fields = {"dataset.name": p["dataset"], "dataset.num_classes": p["num_classes"],
              "dataset.crop_size": p["crop"], "dataset.scale": p["scale"],
              "dataset.eval_scale": p["scale"],
              "eval.mode": p["mode"], "eval.crop_size": p["crop"], "eval.stride": p["stride"]}
    if p["dataset"] in LABEL_CANVAS:  # images of mixed sizes, each at its own size, as mmseg
        fields.update({"dataset.eval_label_canvas": LABEL_CANVAS[p["dataset"]],
                       "eval_batch_size": 1})
    return fields


def _unsupported(stem: str, why: str) -> ValueError:
    supported = [f for f in heads.list_families() if heads.get_family(f).mmseg_renames is not None]
    return ValueError(
        f"config {stem!r} is not an mmseg config attnzoo rebuilds ({why}); supported: "
        f"<family>_<backbone>_<gpus>xb<batch>-<iterations>k_<dataset>-<crop> (Swin's: "
        f"swin-<size>-patch4-window<M>-<in1k|in22k>[-384x384]-pre_<family>_...; ViT-UPerNet's: "
        f"vit_<vit|deit>-<size>16[-ln][_mln]_<family>_...; Twins': twins_<pcpvt|svt>-<s|b|l>_"
        f"<fpn_fpnhead|uperhead>_...; Mask2Former's Swin-B / L: <family>_swin-<b|l>-<in1k|"
        f"in22k>-384x384-pre_...) with family in "
        f"{supported}, <family>_<backbone> a registered model (models.list_models(), '-' for "
        f"'_') and <dataset>-<crop> in {list(PROTOCOLS)}, e.g. "
        f"'danet_r50-d8_4xb2-80k_cityscapes-512x1024' (published ones: "
        f"attnzoo.convert.mmseg.published_checkpoints())")


def mmseg_recipe(stem: str) -> MmsegRecipe:
    """Parse mmseg config ``stem``; ValueError naming the supported families and datasets."""
    m = (_SWIN_STEM.fullmatch(stem) or _VIT_STEM.fullmatch(stem) or _TWINS_STEM.fullmatch(stem)
         or _PRETRAINED_SWIN_STEM.fullmatch(stem) or _STEM.fullmatch(stem))
    if m is None:
        raise _unsupported(stem, "not of mmseg's stem pattern")
    family_name = _TWINS_FAMILIES[m["head"]] if m.re is _TWINS_STEM else m["family"]
    if family_name not in heads.list_families() or \
            heads.get_family(family_name).mmseg_renames is None:
        raise _unsupported(stem, f"family {family_name!r}")
    if m.re is _SWIN_STEM:
        written = stem.partition("_")[0]
        backbone = f"swin_{m['size'][0]}{'_w12' if m['window'] == '12' else ''}"
    elif m.re is _PRETRAINED_SWIN_STEM:
        written = f"swin-{m['size']}"
        backbone = f"swin_{m['size']}_w12"
    elif m.re is _TWINS_STEM:
        written = f"{m['net']}-{m['size']}"
        backbone = f"{m['net']}_{m['size']}"
    else:
        written = m["backbone"]
        backbone = heads.get_family(family_name).mmseg_backbones.get(
            written, written.replace("-", "_"))
    model = f"{family_name}_{backbone}"
    if model not in models.list_models():
        raise _unsupported(stem, f"backbone {written!r}: no model {model!r}")
    if m["protocol"] not in PROTOCOLS:
        raise _unsupported(stem, f"dataset {m['protocol']!r}")
    protocol = PROTOCOLS[m["protocol"]]
    kwargs: dict[str, Any] = {}
    backbone = backbones.BACKBONES.get(models.get_spec(model).backbone)
    backbone_cls = backbone[0]
    if backbone[1].get("block_cls") is backbones.BasicBlock:  # mmseg's ResNet-18/34
        kwargs["backbone_kwargs"] = {"block_kwargs": {"dilate_conv2": False}}
    head_kwargs = heads.get_family(family_name).mmseg_head_fields(protocol["dataset"])
    if head_kwargs:
        kwargs["head_kwargs"] = head_kwargs
    if protocol["align_corners"]:
        kwargs["align_corners"] = True
    protocol_name, fields = _CONFIG_SLIPS.get(stem, (m["protocol"], {}))
    family = heads.get_family(family_name)
    fields = {**family.recipe, **getattr(models.get_spec(model), "recipe", {}),
              **(family.mmseg_fields(model, PROTOCOLS[protocol_name]) if family.mmseg_fields
                 else {}), **fields}
    for key in ("backbone_kwargs", "head_kwargs", "aux_kwargs"):  # fields that build the model
        if f"model.{key}" in fields:
            kwargs[key] = {**kwargs.get(key, {}), **fields.pop(f"model.{key}")}
    if isinstance(backbone_cls, type) and issubclass(backbone_cls, backbones.VisionTransformer):
        # mmseg's ViT configs learn the position embedding for their crop
        kwargs["backbone_kwargs"] = {"img_size": PROTOCOLS[protocol_name]["crop"],
                                     **kwargs.get("backbone_kwargs", {})}
    return MmsegRecipe(stem, family_name, model, kwargs, protocol_name,
                       int(m["iterations"]) * 1000, int(m["gpus"]) * int(m["batch"]), fields)


def mmseg_model(stem: str) -> nn.Module:
    """The attnzoo model of mmseg config ``stem`` (untrained)."""
    recipe = mmseg_recipe(stem)
    return models.create(recipe.model, num_classes=PROTOCOLS[recipe.protocol]["num_classes"],
                         **recipe.model_kwargs)


def mmseg_renames(family: heads.Family) -> tuple[tuple[str, str], ...]:
    """The ordered ``(pattern, replacement)`` renames of ``family``'s mmseg checkpoints: the
    backbones', the family's own (scoped to ``decode_head.``), then the heads' shared ones."""
    scoped = tuple((r"^decode_head\." + pattern[1:], "decode_head." + replacement)
                   for pattern, replacement in family.mmseg_renames or ())
    return BACKBONE_RENAMES + scoped + HEAD_RENAMES


def split_in_proj(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``nn.MultiheadAttention``'s stacked ``in_proj_weight`` / ``in_proj_bias`` (rows: query,
    key, value; mmseg's MiT attention) as three ``query`` / ``key`` / ``value`` linear layers;
    other keys unchanged."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in ("in_proj_weight", "in_proj_bias"):
            parts = np.split(to_numpy(value), 3, axis=0)
            for name, part in zip(("query", "key", "value"), parts):
                out[f"{prefix}.{name}.{leaf.removeprefix('in_proj_')}"] = part
        else:
            out[key] = value
    return out


def _with_patch_bias(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A ViT state dict with its patch embedding's bias: mmseg 0.x (which trained the published
    checkpoints) gave the patch conv a bias, mmseg 1.x's ``VisionTransformer`` defaults to none
    (``patch_bias=False``); a checkpoint without it converts with a zero bias, the same
    function."""
    weight = "backbone.patch_embed.projection.weight"
    bias = "backbone.patch_embed.projection.bias"
    if weight in state_dict and bias not in state_dict:
        return {**state_dict, bias: np.zeros(state_dict[weight].shape[0], np.float32)}
    return state_dict


def from_mmseg(config: str, state_dict: Mapping[str, Any] | str | Path
               ) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, variables)`` of mmseg config ``config`` from its trained weights.

    Args:
      config: mmseg's config file stem, e.g. ``"ccnet_r101-d8_4xb4-160k_ade20k-512x512"``.
      state_dict: names -> arrays (numpy or torch), as ``torch.load(path)["state_dict"]``
        gives, or the checkpoint file's path.

    Returns:
      The model (``models.create`` of the matching name) and ``{"params", "batch_stats"}``:
      ``model.apply(variables, images_nhwc)["out"]`` are mmseg's ``encode_decode`` logits.

    Raises:
      ValueError for an unknown config; ConversionError listing every unused, missing and
      mis-shaped key when the weights are not of that architecture.
    """
    if isinstance(state_dict, (str, Path)):
        from attnzoo.convert.backbones import load_state_dict

        state_dict = load_state_dict(state_dict)
    recipe = mmseg_recipe(config)
    family = heads.get_family(recipe.family)
    model = mmseg_model(config)
    state_dict = split_in_proj({k: to_numpy(v) for k, v in state_dict.items()})
    if family.mmseg_state_dict is not None:
        state_dict = family.mmseg_state_dict(state_dict)
    if isinstance(model.backbone, backbones.VisionTransformer):
        state_dict = _with_patch_bias(state_dict)
    target = target_shapes(model, jnp.zeros((1, 64, 64, 3), jnp.float32))
    return model, convert_state_dict(state_dict, target, regex_renames=mmseg_renames(family))


@dataclasses.dataclass(frozen=True)
class PublishedCheckpoint:
    """A row of ``mmseg_checkpoints.csv``: a checkpoint mmseg publishes, with its mIoU as
    mmseg's metafile states it (single scale, and multi-scale + flip where published)."""

    family: str
    config: str
    dataset: str
    crop: str
    schedule: str
    checkpoint: str
    miou: float
    miou_ms: float | None


@functools.cache
def published_checkpoints() -> dict[str, PublishedCheckpoint]:
    """Every published mmseg checkpoint attnzoo restores, by config stem (the data file
    ``mmseg_checkpoints.csv``)."""
    with CHECKPOINTS_FILE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["config"]: PublishedCheckpoint(
        **{**r, "miou": float(r["miou"]), "miou_ms": float(r["miou_ms"]) if r["miou_ms"] else None})
        for r in rows}
