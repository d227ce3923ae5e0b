"""The registered models: every head family (``heads.list_families()``) on each of its model
sets, and the Attention U-Nets.

Model names are lowercase words joined by ``_``: the family, then the backbone
(``danet_r50_d8``, ``segformer_mit_b2``, ``attention_unet_small``). A model set turns a family
into descriptions (:class:`EncoderDecoderSpec`):

* ``resnet``: ``<family>_r<depth>_d<stride>`` (depth 18, 50, 101; output stride 8, 16) on
  ResNet-v1c (deep stem, as mmsegmentation's ``ResNetV1c``), the family's head of 512
  channels reading stage 4 (or the stages of its ``in_feature``) and an auxiliary FCN head
  (one conv of 256 channels, loss weight 0.4; unless the family says otherwise) reading
  stage 3, as mmsegmentation's ``<family>_r50-d8.py`` model files; r18 models
  use the narrower heads of mmsegmentation's r18 recipes (128 channels, auxiliary 64).
* ``mit``: ``<family>_mit_b<k>`` (k = 0..5) on a :class:`MixVisionTransformer` ``mit_b<k>``,
  the head reading all four stages (256 channels for B0/B1, 768 for B2-B5, as the SegFormer
  paper and the Hugging Face hub; no auxiliary head).
* ``resnet_fpn``: ``<family>_r{18,50,101}`` on ResNet-v1c undilated (output stride 32), the
  head reading all four stages (a feature pyramid, 512 channels unless the family's
  ``set_head_kwargs`` say otherwise) and an auxiliary FCN head (256 channels, loss weight 0.4;
  unless the family has none) on stage 3, as mmsegmentation's ``upernet_r50.py`` /
  ``fpn_r50.py`` model files (its R-18 recipes keep these widths).
* ``swin``: ``<family>_swin_{t,s,b,l}`` (window 7) and ``<family>_swin_{b,l}_w12`` on a
  :class:`~attnzoo.backbones.SwinTransformer`, the head reading all four stages (512
  channels) and an auxiliary FCN head (256 channels, loss weight 0.4) on stage 3, as
  mmsegmentation's ``upernet_swin.py`` model file.
* ``hrnet``: ``<family>_hr{18s,18,48}`` on the HRNetV2 of mmsegmentation's ``hr18s`` / ``hr18``
  / ``hr48`` configs (:class:`~attnzoo.backbones.HRNet` ``hrnet_w18_small_v2``, ``hrnet_w18``,
  ``hrnet_w48``), the head reading its four branches resized to the first's size and
  concatenated (the family's ``set_head_kwargs["hrnet"]`` sizes it by their width; no
  auxiliary head), as mmsegmentation's ``fcn_hr18.py`` / ``ocrnet_hr18.py`` model files.
* ``vit``: ``<family>_{vit_b16,deit_s16,deit_b16}[_mln|_ln_mln]`` on a
  :class:`~attnzoo.backbones.VisionTransformer` (``vit_b16`` / ``vit_s16``, the position
  embedding learned for 512 x 512; DeiT and the ``ln`` models with stochastic depth 0.1) whose
  layers 3, 6, 9, 12 feed the head (512 channels) directly or through mmseg's
  ``MultiLevelNeck`` (``mln``: rescaled by 4, 2, 1, 1/2 to strides 4 to 32), ``ln`` adding a
  final LayerNorm; an auxiliary FCN head (256 channels, loss weight 0.4) on the fourth level,
  as mmsegmentation's ``upernet_vit-b16_ln_mln.py`` model file and its ``vit`` configs.
* ``segmenter``: ``<family>_vit_{t,s,b,l}_mask`` on a ViT (``vit_{t,s,b,l}16``, the position
  embedding learned for 512 x 512, 640 x 640 for L; a final LayerNorm; stochastic depth 0.1),
  the head (as wide as the ViT, as many attention heads) reading its last layer; and
  ``<family>_vit_s_fcn``, a 1x1 conv on ViT-S's patches instead (the paper's linear decoder);
  no auxiliary head, as mmsegmentation's ``segmenter_vit-b16_mask.py`` and ``segmenter``
  configs.
* ``twins``: ``<family>_{pcpvt,svt}_{s,b,l}`` on a :class:`~attnzoo.backbones.Twins`, the head
  reading all four stages (512 channels unless the family's ``set_head_kwargs["twins"]`` say
  otherwise) and an auxiliary FCN head (256 channels, loss weight 0.4; unless the family has
  none) on stage 3, as mmsegmentation's ``twins_pcpvt-s_upernet.py`` / ``twins_pcpvt-s_fpn.py``
  model files; mmseg's AdamW recipe (and the family's ``set_recipe["twins"]`` over it).
* ``setr``: ``<family>_vit_l_{naive,pup,mla}`` on ViT-L (the position embedding learned for
  768 x 768 and resized bilinearly): SETR-naive and -PUP read layers 10, 15, 20, 24, the head
  the last and an auxiliary SETR head each of the others; SETR-MLA reads layers 6, 12, 18, 24
  without the class token through the MLA neck, its head all four levels and an auxiliary
  1x1 conv each; the heads at 10x the learning rate; as mmsegmentation's ``setr_naive.py`` /
  ``setr_pup.py`` / ``setr_mla.py`` model files and its ``setr`` configs.
* ``hybrid``: ``<family>_r50_vit_b16`` on the R50+ViT-B/16 hybrid
  (:class:`~attnzoo.backbones.HybridVisionTransformer`, the position embedding for 224 x 224),
  the head reading its ResNet's stem and first two stages and its ViT's output (512 channels;
  no auxiliary head), as TransUNet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attnzoo import backbones, heads
from attnzoo._checks import check_choice
from attnzoo.models.registry import register
from attnzoo.models.specs import EncoderDecoderSpec, UNetSpec

DEPTHS = (18, 50, 101)
STRIDES = (8, 16)


def resnet_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``resnet`` model set of ``family``."""
    out = {}
    for depth in DEPTHS:
        channels, aux = (128, 64) if depth == 18 else (512, 256)
        for stride in STRIDES:
            out[f"{family.name}_r{depth}_d{stride}"] = EncoderDecoderSpec(
                backbone=f"resnet{depth}_v1c", head=family.head, output_stride=stride,
                head_kwargs={"channels": channels},
                aux_head="fcn" if family.auxiliary else None,
                aux_kwargs={"channels": aux, "num_convs": 1, "concat_input": False},
                in_feature=family.in_feature, family=family.name)
    return out


def mit_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``mit`` model set of ``family``."""
    return {f"{family.name}_mit_b{k}": EncoderDecoderSpec(
        backbone=f"mit_b{k}", head=family.head, output_stride=None,
        head_kwargs={"channels": 256 if k < 2 else 768}, aux_head=None,
        in_feature=("c1", "c2", "c3", "c4"), family=family.name) for k in range(6)}


def _set_head_kwargs(family: heads.Family, model_set: str, backbone: str) -> dict[str, Any]:
    """The head fields ``family`` sets on ``model_set``'s models of ``backbone``
    (:attr:`~attnzoo.heads.Family.set_head_kwargs`, given the summed width of its levels)."""
    if model_set not in family.set_head_kwargs:
        return {}
    width = sum(c for c, _ in backbones.create(backbone).feature_info().values())
    return dict(family.set_head_kwargs[model_set](width))


def resnet_fpn_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``resnet_fpn`` model set of ``family``."""
    out = {}
    for depth in DEPTHS:
        backbone = f"resnet{depth}_v1c"
        out[f"{family.name}_r{depth}"] = EncoderDecoderSpec(
            backbone=backbone, head=family.head, output_stride=32,
            head_kwargs={"channels": 512, **_set_head_kwargs(family, "resnet_fpn", backbone)},
            aux_head="fcn" if family.auxiliary else None,
            aux_kwargs={"channels": 256, "num_convs": 1, "concat_input": False},
            in_feature=("c1", "c2", "c3", "c4"), family=family.name)
    return out


SWINS = ("t", "s", "b", "l", "b_w12", "l_w12")
# mmseg's recipe for its Swin and ViT models (configs/swin, configs/vit): AdamW (lr 6e-5, betas
# 0.9 / 0.999, weight decay 0.01, none on position embeddings, tokens and norms), linear
# warm-up over 1500 steps from 1e-6 of the rate, then poly (power 1) to 0
TRANSFORMER_RECIPE = {
    "optimizer.name": "adamw", "optimizer.learning_rate": 6e-5, "optimizer.b1": 0.9,
    "optimizer.b2": 0.999, "optimizer.weight_decay": 0.01, "optimizer.schedule": "poly",
    "optimizer.power": 1.0, "optimizer.min_lr": 0.0, "optimizer.warmup_steps": 1500}


def swin_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``swin`` model set of ``family``."""
    return {f"{family.name}_swin_{k}": EncoderDecoderSpec(
        backbone=f"swin_{k}", head=family.head, output_stride=None,
        head_kwargs={"channels": 512}, aux_head="fcn",
        aux_kwargs={"channels": 256, "num_convs": 1, "concat_input": False},
        in_feature=("c1", "c2", "c3", "c4"), family=family.name, recipe=TRANSFORMER_RECIPE)
        for k in SWINS}


HRNETS = {"hr18s": "hrnet_w18_small_v2", "hr18": "hrnet_w18", "hr48": "hrnet_w48"}


def hrnet_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``hrnet`` model set of ``family``."""
    out = {}
    for short, backbone in HRNETS.items():
        head_kwargs = _set_head_kwargs(family, "hrnet", backbone)
        out[f"{family.name}_{short}"] = EncoderDecoderSpec(
            backbone=backbone, head=family.head, output_stride=None, head_kwargs=head_kwargs,
            aux_head=None, in_feature=("c1", "c2", "c3", "c4"), resize_concat=True,
            family=family.name)
    return out


# mmseg's vit configs: <network>_<size>16 with no neck, "mln" (its MultiLevelNeck) or "ln_mln"
# (the neck and a final LayerNorm); DeiT is the ViT trained otherwise (stochastic depth 0.1 in
# mmseg's recipes, as its "ln" ViT-B)
VITS = {"vit_b16": "vit_b16", "deit_s16": "vit_s16", "deit_b16": "vit_b16"}
VIT_NECKS = ("", "_mln", "_ln_mln")


def vit_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``vit`` model set of ``family``."""
    out = {}
    for short, backbone in VITS.items():
        width = backbones.create(backbone).embed_dim
        for neck in VIT_NECKS:
            final_norm = neck == "_ln_mln"
            out[f"{family.name}_{short}{neck}"] = EncoderDecoderSpec(
                backbone=backbone, head=family.head, output_stride=None,
                backbone_kwargs={"img_size": (512, 512), "final_norm": final_norm,
                                 "drop_path_rate": 0.1 if short.startswith("deit") or final_norm
                                 else 0.0},
                neck="multilevel" if neck else None,
                neck_kwargs={"out_channels": width} if neck else {},
                head_kwargs={"channels": 512}, aux_head="fcn",
                aux_kwargs={"channels": 256, "num_convs": 1, "concat_input": False},
                aux_feature="c4", in_feature=("c1", "c2", "c3", "c4"), family=family.name,
                recipe=TRANSFORMER_RECIPE)
    return out


# mmseg's segmenter configs: ViT-Ti / S / B / L (the position embedding for the crop: 640 x 640
# for L), its last layer through a final LayerNorm, stochastic depth 0.1
SEGMENTERS = {"t": "vit_t16", "s": "vit_s16", "b": "vit_b16", "l": "vit_l16"}


def segmenter_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``segmenter`` model set of ``family``."""
    out = {}
    for size, backbone in SEGMENTERS.items():
        vit = backbones.create(backbone)
        crop = (640, 640) if size == "l" else (512, 512)
        fields = {"img_size": crop, "final_norm": True, "out_indices": (vit.depth - 1,),
                  "drop_path_rate": 0.1}
        out[f"{family.name}_vit_{size}_mask"] = EncoderDecoderSpec(
            backbone=backbone, head=family.head, output_stride=None, backbone_kwargs=fields,
            head_kwargs={"channels": vit.embed_dim, "num_heads": vit.num_heads}, aux_head=None,
            in_feature="c1", family=family.name)
        if size == "s":  # the paper's linear decoder (Table 3): a 1x1 conv on the patches
            out[f"{family.name}_vit_s_fcn"] = EncoderDecoderSpec(
                backbone=backbone, head="fcn", output_stride=None, backbone_kwargs=fields,
                head_kwargs={"channels": vit.embed_dim, "num_convs": 0, "concat_input": False,
                             "dropout": 0.0},
                aux_head=None, in_feature="c1", family=family.name)
    return out


# mmseg's twins configs: stochastic depth 0.2, 0.3 for SVT-L and for UPerNet on PCPVT-B / L
TWINS = ("pcpvt_s", "pcpvt_b", "pcpvt_l", "svt_s", "svt_b", "svt_l")


def twins_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``twins`` model set of ``family``."""
    out = {}
    for backbone in TWINS:
        deeper = backbone == "svt_l" or (family.head == "uper"
                                          and backbone in ("pcpvt_b", "pcpvt_l"))
        out[f"{family.name}_{backbone}"] = EncoderDecoderSpec(
            backbone=backbone, head=family.head, output_stride=None,
            backbone_kwargs={"drop_path_rate": 0.3 if deeper else 0.2},
            head_kwargs={"channels": 512, **_set_head_kwargs(family, "twins", backbone)},
            aux_head="fcn" if family.auxiliary else None,
            aux_kwargs={"channels": 256, "num_convs": 1, "concat_input": False},
            in_feature=("c1", "c2", "c3", "c4"), family=family.name,
            recipe={**TRANSFORMER_RECIPE, **family.set_recipe.get("twins", {})})
    return out


def setr_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``setr`` model set of ``family`` (its heads and necks are SETR's own)."""
    vit = {"img_size": (768, 768), "interpolate_mode": "bilinear"}
    up = {"channels": 256, "num_convs": 1, "up_scale": 4, "kernel_size": 1}
    variants = {
        "naive": dict(backbone_kwargs={**vit, "out_indices": (9, 14, 19, 23)}, head="setr_up",
                      head_kwargs=up, aux_head="setr_up", aux_kwargs=up,
                      aux_feature=("c1", "c2", "c3"), in_feature="c4"),
        "pup": dict(backbone_kwargs={**vit, "out_indices": (9, 14, 19, 23)}, head="setr_up",
                    head_kwargs={**up, "num_convs": 4, "up_scale": 2, "kernel_size": 3},
                    aux_head="setr_up", aux_kwargs={**up, "num_convs": 2, "kernel_size": 3},
                    aux_feature=("c1", "c2", "c3"), in_feature="c4"),
        "mla": dict(backbone_kwargs={**vit, "out_indices": (5, 11, 17, 23),
                                     "with_cls_token": False},
                    head="setr_mla", head_kwargs={"channels": 512, "mla_channels": 128},
                    neck="mla", neck_kwargs={"out_channels": 256}, aux_head="fcn",
                    aux_kwargs={"channels": 256, "num_convs": 0, "kernel_size": 1,
                                "concat_input": False, "dropout": 0.0},
                    aux_feature=("c1", "c2", "c3", "c4"), in_feature=("c1", "c2", "c3", "c4")),
    }
    out = {}
    for name, fields in variants.items():
        heads_at_10x = ["head"] + [f"aux_head_{i}" for i in range(len(fields["aux_feature"]))]
        out[f"{family.name}_vit_l_{name}"] = EncoderDecoderSpec(
            backbone="vit_l16", output_stride=None, family=family.name,
            recipe={"optimizer.lr_mult": {k: 10.0 for k in heads_at_10x}}, **fields)
    return out


def hybrid_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``hybrid`` model set of ``family``."""
    return {f"{family.name}_r50_vit_b16": EncoderDecoderSpec(
        backbone="r50_vit_b16", head=family.head, output_stride=None,
        head_kwargs={"channels": 512}, aux_head=None, in_feature=("c1", "c2", "c3", "c4"),
        family=family.name)}


# mmseg's Mask2Former configs: torchvision's ResNet (v1b) undilated, Swin-T / S (window 7) and
# Swin-B / L pretrained at 384 x 384 (window 12), stochastic depth 0.3; no auxiliary head; the
# backbone trained at 0.1 of the rate
QUERY_BACKBONES = {"r50": "resnet50_v1b", "r101": "resnet101_v1b", "swin_t": "swin_t",
                   "swin_s": "swin_s", "swin_b_w12": "swin_b_w12", "swin_l_w12": "swin_l_w12"}


def query_models(family: heads.Family) -> dict[str, EncoderDecoderSpec]:
    """The ``query`` model set of ``family``."""
    out = {}
    for short, backbone in QUERY_BACKBONES.items():
        swin = short.startswith("swin")
        out[f"{family.name}_{short}"] = EncoderDecoderSpec(
            backbone=backbone, head=family.head, output_stride=None if swin else 32,
            backbone_kwargs={"drop_path_rate": 0.3} if swin else {}, aux_head=None,
            in_feature=("c1", "c2", "c3", "c4"), family=family.name)
    return out


MODEL_SETS: dict[str, Callable[[heads.Family], dict[str, EncoderDecoderSpec]]] = {
    "resnet": resnet_models, "resnet_fpn": resnet_fpn_models, "mit": mit_models,
    "hrnet": hrnet_models, "swin": swin_models, "vit": vit_models,
    "segmenter": segmenter_models, "twins": twins_models, "setr": setr_models,
    "hybrid": hybrid_models, "query": query_models}

for _name in heads.list_families():
    _family = heads.get_family(_name)
    for _set in _family.model_sets:
        check_choice(_set, tuple(MODEL_SETS), f"family {_name!r}: model set")
        for _model, _spec in MODEL_SETS[_set](_family).items():
            register(_model, _spec)

register("attention_unet", UNetSpec((64, 128, 256, 512, 1024)))
register("attention_unet_small", UNetSpec((16, 32, 64, 128)))
