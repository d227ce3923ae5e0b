"""Backbones against timm / torchvision after weight conversion (eval mode).

Models are built with random weights (timm's / torchvision's own
initialisation) and random BatchNorm affine parameters and statistics, so
that no residual branch is silenced by a zero-initialised last BN. The
reference runs in float64, attnzoo in float32. Tolerance: max |attnzoo -
reference| / max |reference| <= 1e-4 on the stage-4 features.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from attnzoo.convert import (  # noqa: E402
    ConversionError, from_timm, from_torchvision, load_backbone,
)
from attnzoo.convert.__main__ import main as convert_main  # noqa: E402

TOL = 1e-4


def randomize_norms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
    return model.eval()


def features_close(module, variables, want_nchw, x_nchw):
    got = jax.jit(module.apply)(variables, x_nchw.transpose(0, 2, 3, 1))["c4"]
    got = np.asarray(got).transpose(0, 3, 1, 2)
    assert got.shape == want_nchw.shape
    err = np.abs(got - want_nchw).max() / np.abs(want_nchw).max()
    assert err <= TOL, f"max relative error {err:.2e} > {TOL:.0e}"


def levels_close(module, variables, want_nchw, x_nchw):
    """Every level ``c1, c2, ...`` of the backbone within :data:`TOL` of ``want_nchw``'s."""
    got = jax.jit(module.apply)(variables, x_nchw.transpose(0, 2, 3, 1).astype(np.float32))
    for i, want in enumerate(want_nchw):
        level = np.asarray(got[f"c{i + 1}"]).transpose(0, 3, 1, 2)
        assert level.shape == want.shape
        err = np.abs(level - want).max() / np.abs(want).max()
        assert err <= TOL, f"c{i + 1}: max relative error {err:.2e} > {TOL:.0e}"


def image(size=64, seed=0):
    return np.random.default_rng(seed).standard_normal((1, 3, size, size)).astype(np.float32)


def timm_features(model, x):
    with torch.no_grad():
        out = model.double().forward_features(torch.from_numpy(x).double()).numpy()
    model.float()
    return out


@pytest.mark.parametrize("name", ["resnet18", "resnet50d", "seresnet50", "ecaresnet50d",
                                  "skresnet18", "resnest50d"])
def test_timm_stage4_features(name):
    torch.manual_seed(0)
    model = randomize_norms(timm.create_model(name, pretrained=False))
    x = image()
    module, variables = from_timm(name, model.state_dict())
    features_close(module, variables, timm_features(model, x), x)


@pytest.mark.parametrize("name,output_stride", [
    ("resnet50d", 8), ("resnet18", 8), ("resnest50d", 8), ("resnet18", 16),
    pytest.param("resnet50d", 16, marks=pytest.mark.slow),
    pytest.param("resnest50d", 16, marks=pytest.mark.slow)])  # default-run time
def test_timm_dilated(name, output_stride):
    torch.manual_seed(1)
    model = randomize_norms(timm.create_model(name, pretrained=False, output_stride=output_stride))
    x = image(48, seed=1)
    module, variables = from_timm(name, model.state_dict(), output_stride=output_stride)
    assert module.feature_info()["c4"][1] == output_stride
    features_close(module, variables, timm_features(model, x), x)


@pytest.mark.parametrize("dilation", [False, True])
def test_torchvision_resnet50(dilation):
    torch.manual_seed(2)
    model = torchvision.models.resnet50(
        replace_stride_with_dilation=[False, True, True] if dilation else None)
    model = randomize_norms(model)
    body = torch.nn.Sequential(*list(model.children())[:-2]).double()
    x = image(64, seed=2)
    with torch.no_grad():
        want = body(torch.from_numpy(x).double()).numpy()
    module, variables = from_torchvision("resnet50", model.float().state_dict(),
                                         output_stride=8 if dilation else 32)
    features_close(module, variables, want, x)


def test_unknown_and_missing_keys_are_listed():
    sd = dict(timm.create_model("resnet18", pretrained=False).state_dict())
    sd.pop("layer1.0.bn1.running_var")
    sd["layer9.0.conv1.weight"] = sd["layer1.0.conv1.weight"]
    with pytest.raises(ConversionError, match="missing \\(1\\): batch_stats/layer1_0/bn1/var"):
        from_timm("resnet18", sd)
    with pytest.raises(ValueError, match="not a timm model"):
        from_timm("convnext_tiny", sd)


def test_convert_command_writes_a_restorable_checkpoint(tmp_path):
    torch.manual_seed(3)
    model = randomize_norms(timm.create_model("resnet18d", pretrained=False))
    weights = tmp_path / "resnet18d.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "converted"
    assert convert_main(["--source", "timm:resnet18d", "--checkpoint", str(weights),
                         "--out", str(out), "--output-stride", "32"]) == 0
    module, variables = load_backbone(out)
    assert module.deep_stem and module.avg_down
    x = image(64, seed=3)
    features_close(module, variables, timm_features(model, x), x)


def test_safetensors_checkpoint_needs_no_torch_to_read(tmp_path):
    from safetensors.torch import save_file

    from attnzoo.convert import load_state_dict

    model = randomize_norms(timm.create_model("resnet18", pretrained=False))
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    sd = load_state_dict(path)
    assert isinstance(sd["conv1.weight"], np.ndarray)
    module, variables = from_timm("resnet18", sd)
    x = image(64, seed=4)
    features_close(module, variables, timm_features(model, x), x)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pth")


def mmseg_hrnet(module):
    """mmseg's ``HRNet`` with the stage configuration of attnzoo HRNet ``module``."""
    mmseg_support = pytest.importorskip("mmseg_support")
    mmseg_support.install_mmcv_ops()
    from mmseg.models.backbones import HRNet

    extra = {"stage1": dict(num_modules=1, num_branches=1, block="BOTTLENECK",
                            num_blocks=(module.num_blocks[0],),
                            num_channels=(module.stage1_planes,))}
    for k in (2, 3, 4):
        extra[f"stage{k}"] = dict(num_modules=module.num_modules[k - 1], num_branches=k,
                                  block="BASIC", num_blocks=(module.num_blocks[k - 1],) * k,
                                  num_channels=tuple(module.widths[:k]))
    return HRNet(extra)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hrnet_w18_small", "hrnet_w18_small_v2"])
def test_timm_hrnet_weights_give_mmsegs_hrnet_branches(name):
    """timm's HRNet state dict (the official ImageNet models' key names, which mmseg's
    ImageNet initialisations keep) converts with its classification head dropped; loaded into
    mmseg's ``HRNet`` (float64) by the same names, all four branches agree with attnzoo's
    (an odd input size: the fusion's resize to odd branch sizes), and the converted variables
    are the ``fcn_hr*`` models' backbone (``init_from``)."""
    from attnzoo import models
    from attnzoo.convert import save_backbone

    torch.manual_seed(4)
    model = randomize_norms(timm.create_model(name, pretrained=False))
    module, variables = from_timm(name, model.state_dict())
    reference = mmseg_hrnet(module)
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    reference.eval()
    assert not missing and all(k.split(".")[0] in ("incre_modules", "downsamp_modules",
                                                   "final_layer", "classifier")
                               for k in unexpected)
    x = np.random.default_rng(4).standard_normal((1, 3, 45, 61))
    with torch.no_grad():
        want = [t.numpy() for t in reference.double()(torch.from_numpy(x))]
    levels_close(module, variables, want, x)
    if name == "hrnet_w18_small_v2":  # mmseg's hr18s
        restored, _ = load_backbone(save_backbone(
            __import__("tempfile").mkdtemp(), module, variables))
        assert restored == module
        segmentor = models.create("fcn_hr18s", num_classes=19)
        shapes = jax.eval_shape(segmentor.init, jax.random.key(0), np.zeros((1, 64, 64, 3)))
        for collection in ("params", "batch_stats"):
            assert jax.tree.map(lambda a: a.shape, shapes[collection]["backbone"]) == \
                jax.tree.map(lambda a: a.shape, variables[collection])
    with pytest.raises(ValueError, match="output_stride=8.*only 32"):
        from_timm(name, model.state_dict(), output_stride=8)


def test_swin_equals_mmsegs_swin_transformer():
    """A narrow Swin (32 wide, 2 blocks per stage, window 5) with the random weights of mmseg's
    ``SwinTransformer`` (``helpers.randomize_torch``), converted with the mmseg converter's
    backbone renames: the four outputs within 1e-4 of mmseg's float64 run, at an odd size (the
    patch embedding's, the windows' and the merging's padding; shifted windows over it)."""
    from helpers import randomize_torch

    from attnzoo import backbones
    from attnzoo.convert.mmseg import BACKBONE_RENAMES
    from attnzoo.convert.torch_weights import convert_state_dict, target_shapes

    pytest.importorskip("mmseg_support").install_mmcv_ops()
    from mmseg.models.backbones import SwinTransformer

    fields = dict(depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=5)
    reference = randomize_torch(SwinTransformer(embed_dims=32, drop_path_rate=0.3, **fields))
    reference.eval()
    module = backbones.create("swin_t", embed_dim=32, **fields)
    x = np.random.default_rng(5).standard_normal((2, 3, 45, 61))
    target = {k: {"backbone": v} for k, v in target_shapes(
        module, np.zeros((1, 64, 64, 3), np.float32)).items()}
    variables = convert_state_dict(
        {f"backbone.{k}": v.numpy() for k, v in reference.state_dict().items()}, target,
        regex_renames=BACKBONE_RENAMES)
    variables = {k: v["backbone"] for k, v in variables.items()}
    with torch.no_grad():
        want = [t.numpy() for t in reference.double()(torch.from_numpy(x))]
    levels_close(module, variables, want, x)


@pytest.mark.slow
def test_timm_swin_weights_give_timms_stage_features():
    """timm's Swin (a narrow one: 32 wide, 2 blocks per stage, window 4, random weights; at 256
    x 256, so that every stage is larger than the window: timm, as the paper's classifier, does
    not shift a window that covers the whole map, mmseg does) converts for
    ``init_from``: attnzoo's stage outputs are timm's ``forward_intermediates`` features
    (without timm's final norm) through the per-stage norms, which start as plain LayerNorms (timm has none; mmseg starts
    them so too); timm's merging channel order becomes mmseg's."""
    from helpers import randomize_torch

    from attnzoo.convert import save_backbone
    from attnzoo.convert.backbones import _convert, timm_backbone

    fields = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4)
    model = randomize_torch(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False,
                                              img_size=256, **fields)).eval()
    name, kwargs = timm_backbone("swin_tiny_patch4_window7_224")
    assert name == "swin_t" and timm_backbone("swin_large_patch4_window12_384")[0] == "swin_l_w12"
    module, variables = _convert(name, {**kwargs, **fields}, model.state_dict(), 32)
    x = np.random.default_rng(6).standard_normal((1, 3, 256, 256))
    with torch.no_grad():
        stages = model.double().forward_intermediates(torch.from_numpy(x), norm=False,
                                                      intermediates_only=True)
    got = jax.jit(module.apply)(variables, x.transpose(0, 2, 3, 1).astype(np.float32))
    for i, stage in enumerate(stages):
        s = stage.numpy().transpose(0, 2, 3, 1)
        want = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-5)
        err = np.abs(np.asarray(got[f"c{i + 1}"]) - want).max() / np.abs(want).max()
        assert err <= TOL, f"c{i + 1}: max relative error {err:.2e} > {TOL:.0e}"
    restored, _ = load_backbone(save_backbone(__import__("tempfile").mkdtemp(), module,
                                              variables))
    assert restored == module


@pytest.mark.parametrize("fields", [
    dict(interpolate_mode="bicubic", final_norm=True, with_cls_token=True, patch_bias=True),
    dict(interpolate_mode="bilinear", final_norm=False, with_cls_token=False, patch_bias=False)])
def test_vit_equals_mmsegs_vision_transformer(fields):
    """A narrow ViT (48 wide, 4 layers, patch 8, position embedding learned for 64 x 64) with
    the random weights of mmseg's ``VisionTransformer``, converted with the mmseg converter's
    renames: the outputs of layers 1 and 3 within 1e-4 of mmseg's float64 run at 45 x 61 (the
    patch embedding's corner padding; the 8 x 8 position grid resized to 6 x 8 as ``fields``
    say; the class token kept or dropped; a final norm or none; mmseg 1.x's patch conv without
    a bias converted with a zero one)."""
    from helpers import randomize_torch

    from attnzoo import backbones
    from attnzoo.convert.mmseg import BACKBONE_RENAMES, _with_patch_bias, split_in_proj
    from attnzoo.convert.torch_weights import convert_state_dict, target_shapes

    pytest.importorskip("mmseg_support").install_mmcv_ops()
    from mmseg.models.backbones import VisionTransformer

    reference = randomize_torch(VisionTransformer(
        img_size=64, patch_size=8, embed_dims=48, num_layers=4, num_heads=3, out_indices=(1, 3),
        norm_cfg=dict(type="LN", eps=1e-6), **fields))
    reference.eval()  # (mmseg's ViT.train returns None)
    module = backbones.create("vit_t16", embed_dim=48, depth=4, num_heads=3, patch_size=8,
                              img_size=(64, 64), out_indices=(1, 3),
                              **{k: v for k, v in fields.items() if k != "patch_bias"})
    x = np.random.default_rng(7).standard_normal((2, 3, 45, 61))
    target = {k: {"backbone": v} for k, v in target_shapes(
        module, np.zeros((1, 64, 64, 3), np.float32)).items()}
    state_dict = _with_patch_bias(split_in_proj(
        {f"backbone.{k}": v.numpy() for k, v in reference.state_dict().items()}))
    variables = convert_state_dict(state_dict, target, regex_renames=BACKBONE_RENAMES)
    variables = {k: v["backbone"] for k, v in variables.items()}
    with torch.no_grad():
        want = [t.numpy() for t in reference.double()(torch.from_numpy(x))]
    levels_close(module, variables, want, x)


@pytest.mark.parametrize("timm_name", ["vit_small_patch16_224", "deit_base_patch16_384"])
def test_timm_vit_weights_give_timms_layer_outputs(timm_name):
    """timm's ViT / DeiT (narrow: 64 wide, 4 layers, random weights) converts for
    ``init_from``: attnzoo's outputs of layers 2 and 4 are timm's ``forward_intermediates``
    (without its final norm; with it, the ``final_norm`` backbone's last output), within 1e-4;
    to a backbone of another ``img_size`` the position embedding converts resized as mmseg's
    ``VisionTransformer.resize_pos_embed`` resizes it when it loads these weights."""
    from helpers import randomize_torch

    from attnzoo.convert import save_backbone
    from attnzoo.convert.backbones import timm_backbone

    pytest.importorskip("mmseg_support").install_mmcv_ops()
    from mmseg.models.backbones import VisionTransformer

    size = int(timm_name[-3:])
    model = randomize_torch(timm.create_model(timm_name, pretrained=False, embed_dim=64, depth=4,
                                              num_heads=2, img_size=64)).eval()
    name, kwargs = timm_backbone(timm_name)
    assert (name, kwargs) == ({"small": "vit_s16"}.get(timm_name.split("_")[1], "vit_b16"),
                              {"img_size": (size, size)})
    narrow = dict(embed_dim=64, depth=4, num_heads=2, out_indices=(1, 3))
    sd = model.state_dict()
    x = np.random.default_rng(8).standard_normal((1, 3, 64, 64))
    with torch.no_grad():
        layers = model.double().forward_intermediates(torch.from_numpy(x), indices=[1, 3],
                                                      norm=False, intermediates_only=True)
        last = model.norm(model.forward_intermediates(torch.from_numpy(x), indices=[3],
                                                      norm=False, intermediates_only=True)[0]
                          .flatten(2).transpose(1, 2)).transpose(1, 2).reshape(1, 64, 4, 4)
    for final_norm, want in ((False, [t.numpy() for t in layers]),
                             (True, [layers[0].numpy(), last.numpy()])):
        module, variables = from_timm(timm_name, sd, fields={
            **narrow, "img_size": (64, 64), "final_norm": final_norm})
        levels_close(module, variables, want, x)
    module, variables = from_timm(timm_name, sd, fields={**narrow, "img_size": (96, 80)})
    want = VisionTransformer.resize_pos_embed(sd["pos_embed"].double(), (6, 5), (4, 4), "bicubic")
    np.testing.assert_allclose(np.asarray(variables["params"]["pos_embed"]), want.numpy(),
                               rtol=0, atol=1e-6 * float(want.abs().max()))
    restored, _ = load_backbone(save_backbone(__import__("tempfile").mkdtemp(), module,
                                              variables))
    assert restored == module


@pytest.mark.parametrize("fields,match", [
    ({"img_size": (8, 64)}, r"img_size must be \(H, W\), each at least patch_size 16"),
    ({"out_indices": (3, 12)}, r"out_indices must be increasing layer indices in \[0, 12\)"),
    ({"interpolate_mode": "nearest"}, r"interpolate_mode must be one of"),
    ({"embed_dim": 100}, r"embed_dim 100 must divide by num_heads 12")])
def test_bad_vit_fields_are_named(fields, match):
    from attnzoo import backbones

    with pytest.raises(ValueError, match=match):
        backbones.create("vit_b16", **fields)


def test_a_vit_checkpoint_of_another_size_is_refused_by_key():
    """DeiT-S weights into DeiT-B's config: every mis-shaped key is named."""
    from attnzoo import models
    from attnzoo.convert import from_mmseg
    from attnzoo.convert.torch_weights import target_shapes

    small = models.create("upernet_deit_s16", num_classes=150)
    shapes = target_shapes(small, np.zeros((1, 64, 64, 3), np.float32))
    state_dict = {"backbone.pos_embed": np.zeros(shapes["params"]["backbone"]["pos_embed"].shape,
                                                 np.float32)}
    with pytest.raises(ConversionError, match=r"backbone\.pos_embed.*\(1, 1025, 384\)"):
        from_mmseg("vit_deit-b16_upernet_8xb2-80k_ade20k-512x512", state_dict)


@pytest.mark.slow
def test_convert_command_builds_a_vit_for_the_model_it_initialises(tmp_path):
    """``--model``: timm's DeiT-S (224 x 224, random weights) written as the backbone of
    ``upernet_deit_s16_ln_mln`` (position embedding for 512 x 512, final norm), and timm's
    R50+ViT-B/16 (384) as TransUNet's (224), whose ``backbone`` variables they fit exactly; a
    model on another backbone is refused by name."""
    from attnzoo import models
    from attnzoo.convert.torch_weights import target_shapes

    weights = tmp_path / "deit_s.pth"
    torch.save(timm.create_model("deit_small_patch16_224", pretrained=False).state_dict(), weights)
    out = tmp_path / "converted"
    assert convert_main(["--source", "timm:deit_small_patch16_224", "--checkpoint", str(weights),
                         "--out", str(out), "--model", "upernet_deit_s16_ln_mln"]) == 0
    module, variables = load_backbone(out)
    assert module.img_size == (512, 512) and module.final_norm
    model = models.create("upernet_deit_s16_ln_mln", num_classes=150)
    want = target_shapes(model, np.zeros((1, 64, 64, 3), np.float32))["params"]["backbone"]
    assert jax.tree.map(lambda a: a.shape, variables["params"]) == jax.tree.map(
        lambda a: a.shape, want)
    with pytest.raises(ValueError, match=r"--model 'upernet_swin_t' is not built on 'vit_s16'"):
        convert_main(["--source", "timm:deit_small_patch16_224", "--checkpoint", str(weights),
                      "--out", str(tmp_path / "other"), "--model", "upernet_swin_t"])
    # TransUNet from timm's R50+ViT-B/16 at 384: the position embedding to its 224 grid; into
    # the folder of the DeiT only with --overwrite, which replaces it whole
    weights = tmp_path / "r50_vit.pth"
    torch.save(timm.create_model("vit_base_r50_s16_384", pretrained=False).state_dict(), weights)
    args = ["--source", "timm:vit_base_r50_s16_384", "--checkpoint", str(weights), "--out",
            str(out), "--model", "transunet_r50_vit_b16"]
    with pytest.raises(ValueError, match=r"--out .*converted holds a run \(attnzoo_backbone.json, "
                                         r"variables/\): give a new folder, or --overwrite"):
        convert_main(args)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="--out .*a_file is a file"):
        convert_main([*args[:5], str(tmp_path / "a_file"), *args[6:]])
    assert convert_main([*args, "--overwrite"]) == 0
    module, variables = load_backbone(out)
    want = target_shapes(models.create("transunet_r50_vit_b16", num_classes=9),
                         np.zeros((1, 64, 64, 3), np.float32))["params"]["backbone"]
    assert module.img_size == (224, 224) and jax.tree.map(
        lambda a: a.shape, variables["params"]) == jax.tree.map(lambda a: a.shape, want)


@pytest.mark.parametrize("kind,size", [("PCPVT", (45, 61)), ("SVT", (45, 61)),
                                       pytest.param("SVT", (56, 61), marks=pytest.mark.slow),
                                       pytest.param("SVT", (56, 48), marks=pytest.mark.slow)])
def test_twins_equals_mmsegs_pcpvt_and_svt(kind, size):
    """Narrow Twins (16-32-48-64 wide, 2 layers per stage, SVT's groups 3 x 3) with the random
    weights of mmseg's ``PCPVT`` / ``SVT``, converted with the mmseg converter's renames: the
    four outputs within 1e-4 of mmseg's float64 run. The sizes pad the patch embeddings, and
    SVT's groups (stage 1: 12 x 16, 14 x 16, 14 x 12 positions) at the right only, at the bottom
    and right (masked pairs) and at the bottom only (mmseg's mask then masks nothing)."""
    from helpers import randomize_torch

    from attnzoo import backbones
    from attnzoo.convert.mmseg import BACKBONE_RENAMES, split_in_proj
    from attnzoo.convert.torch_weights import convert_state_dict, target_shapes

    pytest.importorskip("mmseg_support").install_mmcv_ops()
    from mmseg.models import backbones as mmseg_backbones

    fields = dict(embed_dims=[16, 32, 48, 64], num_heads=[1, 2, 3, 4], depths=[2, 2, 2, 2],
                  mlp_ratios=[2, 2, 4, 4], sr_ratios=[4, 2, 2, 1], qkv_bias=True)
    if kind == "SVT":
        fields.update(windiow_sizes=[3, 3, 3, 3], norm_after_stage=True)
    reference = randomize_torch(getattr(mmseg_backbones, kind)(drop_path_rate=0.2, **fields))
    reference.eval()
    ours = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
            if k not in ("qkv_bias", "windiow_sizes")}
    if kind == "SVT":
        ours["window_sizes"] = (3, 3, 3, 3)
    module = backbones.create("svt_s" if kind == "SVT" else "pcpvt_s", **ours)
    x = np.random.default_rng(9).standard_normal((2, 3, *size))
    target = {k: {"backbone": v} for k, v in target_shapes(
        module, np.zeros((1, 64, 64, 3), np.float32)).items()}
    variables = convert_state_dict(
        split_in_proj({f"backbone.{k}": v.numpy() for k, v in reference.state_dict().items()}),
        target, regex_renames=BACKBONE_RENAMES)
    variables = {k: v["backbone"] for k, v in variables.items()}
    with torch.no_grad():
        want = [t.numpy() for t in reference.double()(torch.from_numpy(x))]
    levels_close(module, variables, want, x)


def test_r50_vit_hybrid_equals_timms_and_its_resnet_pads_as_tensorflow():
    """timm's R50+ViT-B/16 hybrid (``vit_base_r50_s16_384``, its ViT narrowed to 2 layers 64
    wide, random weights) converts (``from_timm``): attnzoo's ``c4`` is timm's
    ``forward_features`` without the class token, its ``c1`` .. ``c3`` timm's ResNet stem (before
    the pooling) and first two stages; the ResNet alone also at 45 x 61 (TensorFlow's "same"
    padding, odd sizes), all within 1e-4 of timm's float64 run."""
    from helpers import randomize_torch

    from attnzoo.backbones.resnetv2 import ResNetV2

    model = randomize_torch(timm.create_model("vit_base_r50_s16_384", pretrained=False,
                                              embed_dim=64, depth=2, num_heads=2,
                                              img_size=64)).eval()
    module, variables = from_timm("vit_base_r50_s16_384", model.state_dict(), fields=dict(
        embed_dim=64, depth=2, num_heads=2, img_size=(64, 64), out_indices=(1,)))
    resnet = model.patch_embed.backbone.double()

    def timm_resnet(x):
        stem = resnet.stem.norm(resnet.stem.conv(x))
        out, y = [stem], resnet.stem.pool(stem)
        for stage in resnet.stages:
            y = stage(y)
            out.append(y)
        return out

    x = np.random.default_rng(10).standard_normal((1, 3, 64, 64))
    with torch.no_grad():
        tokens = model.double().forward_features(torch.from_numpy(x))[:, 1:]
        want = [t.numpy() for t in timm_resnet(torch.from_numpy(x))[:3]]
    want.append(tokens.transpose(1, 2).reshape(1, 64, 4, 4).numpy())
    levels_close(module, variables, want, x)
    odd = np.random.default_rng(11).standard_normal((1, 3, 45, 61))
    with torch.no_grad():
        want = [t.numpy() for t in timm_resnet(torch.from_numpy(odd))]
    levels_close(ResNetV2(), {"params": variables["params"]["resnet"]}, want, odd)


def test_transunet_decoder_equals_its_definition_in_torch():
    """TransUNet's cascaded upsampler (narrow, random weights and BN statistics) against its
    definition written with PyTorch's functions in float64: a 3x3 conv-BN-ReLU, then per block
    bilinear x2 upsampling with aligned corners (to the skip's size), the skip concatenated, two
    3x3 conv-BN-ReLU; a 3x3 conv to the classes. Features of a 45 x 61 image (the skips' odd
    sizes: 23 x 31, 12 x 16, 6 x 8); 1e-5 of the largest logit."""
    import torch.nn.functional as F

    from attnzoo import heads
    from helpers import randomize_inputs

    head = heads.create("cup", num_classes=5, channels=24, decoder_channels=(16, 12, 8, 8))
    rng = np.random.default_rng(12)
    feats = [rng.standard_normal((2, h, w, c)).astype(np.float32)
             for h, w, c in ((23, 31, 8), (12, 16, 12), (6, 8, 16), (3, 4, 20))]
    variables = randomize_inputs(jax.eval_shape(head.init, jax.random.key(0), feats), 13)
    variables["batch_stats"] = jax.tree.map(lambda v: np.abs(v) + 0.5,
                                            variables["batch_stats"])
    got = np.asarray(head.apply(variables, feats)["out"])
    p = jax.tree.map(lambda a: torch.from_numpy(np.asarray(a, np.float64)), variables)

    def cbr(x, name):
        kernel = p["params"][name]["conv"]["kernel"].permute(3, 2, 0, 1)
        bn, stats = p["params"][name]["bn"], p["batch_stats"][name]["bn"]
        y = F.batch_norm(F.conv2d(x, kernel, padding=1), stats["mean"], stats["var"],
                         bn["scale"], bn["bias"], eps=1e-5)
        return F.relu(y)

    t = [torch.from_numpy(f.astype(np.float64)).permute(0, 3, 1, 2) for f in feats]
    x = cbr(t[3], "conv_more")
    for i, skip in enumerate([t[2], t[1], t[0], None]):
        size = skip.shape[2:] if skip is not None else (2 * x.shape[2], 2 * x.shape[3])
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], 1)
        x = cbr(cbr(x, f"blocks_{i}_conv1"), f"blocks_{i}_conv2")
    seg = p["params"]["segmentation_head"]
    want = F.conv2d(x, seg["kernel"].permute(3, 2, 0, 1), seg["bias"], padding=1)
    want = want.permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape == (2, 46, 62, 5)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 1e-5, f"max relative error {err:.2e}"


@pytest.mark.parametrize("timm_name", ["twins_pcpvt_small",
                                       pytest.param("twins_svt_small", marks=pytest.mark.slow)])
def test_timm_twins_weights_give_timms_stages(timm_name):
    """timm's Twins (narrow: 16-32-48-64 wide, 2 layers per stage, random weights; at 64 x 64,
    SVT's groups 2 x 2) converts for ``init_from``: PCPVT's four stage outputs are timm's
    ``forward_intermediates``; SVT's first is timm's first normalised by the plain LayerNorm
    after it (mmseg's SVT normalises between stages, timm's does not, so the later ones
    differ by design); within 1e-4."""
    from helpers import randomize_torch

    from attnzoo.convert import save_backbone
    from attnzoo.convert.backbones import timm_backbone

    narrow = dict(embed_dims=[16, 32, 48, 64], num_heads=[1, 2, 3, 4], depths=[2, 2, 2, 2],
                  mlp_ratios=[2, 2, 4, 4])
    if "svt" in timm_name:
        narrow["wss"] = [2, 2, 2, 2]
    model = randomize_torch(timm.create_model(timm_name, pretrained=False, **narrow)).eval()
    name, kwargs = timm_backbone(timm_name)
    assert (name, kwargs) == ({"twins_pcpvt_small": "pcpvt_s", "twins_svt_small": "svt_s"}[
        timm_name], {})
    fields = {k: tuple(v) for k, v in narrow.items() if k != "wss"}
    if "svt" in timm_name:
        fields["window_sizes"] = (2, 2, 2, 2)
    module, variables = from_timm(timm_name, model.state_dict(), fields=fields)
    x = np.random.default_rng(14).standard_normal((1, 3, 64, 64))
    with torch.no_grad():
        stages = [t.numpy() for t in model.double().forward_intermediates(
            torch.from_numpy(x), intermediates_only=True, norm=False)]
    if "svt" in timm_name:
        s = stages[0]
        stages = [(s - s.mean(1, keepdims=True)) / np.sqrt(s.var(1, keepdims=True) + 1e-5)]
    levels_close(module, variables, stages, x)
    restored, _ = load_backbone(save_backbone(__import__("tempfile").mkdtemp(), module,
                                              variables))
    assert restored == module
