"""mmsegmentation's trained segmentors in attnzoo: ``convert.from_mmseg`` against mmseg's own
model code (built from its shipped configs by its registry, random weights and BN statistics,
attention gammas non-zero), the PSA mask op against a loop, and the errors.

Tolerance: attnzoo's float32 full-resolution logits vs mmseg's ``encode_decode`` in float64,
max |difference| <= 1e-4 x max |reference| (the parity bound of the backbone tests)."""

import numpy as np
import pytest
from helpers import randomize_torch

from attnzoo import ops
from attnzoo.convert import ConversionError, from_mmseg
from attnzoo.convert.mmseg import PUBLISHED, mmseg_config, mmseg_recipe

mmseg_support = pytest.importorskip("mmseg_support")
torch = pytest.importorskip("torch")

FAST = [f"{f}_r50-d8_4xb2-80k_cityscapes-512x1024"
        for f in ("fcn", "danet", "ccnet", "nonlocal", "gcnet", "deeplabv3", "pspnet", "psanet")
        ] + [pytest.param("segformer_mit-b0_8xb2-160k_ade20k-512x512", marks=pytest.mark.slow)]
SLOW = ["danet_r101-d8_4xb4-160k_ade20k-512x512", "psanet_r50-d8_4xb4-80k_ade20k-512x512",
        "pspnet_r50-d8_4xb2-80k_cityscapes-769x769", "ccnet_r101-d8_4xb2-80k_cityscapes-769x769",
        "psanet_r101-d8_4xb2-40k_cityscapes-769x769", "deeplabv3_r101-d8_4xb4-80k_ade20k-512x512",
        "fcn_r101-d8_4xb4-160k_ade20k-512x512", "gcnet_r101-d8_4xb4-80k_ade20k-512x512",
        "nonlocal_r101-d8_4xb2-80k_cityscapes-512x1024",
        "segformer_mit-b2_8xb1-160k_cityscapes-1024x1024",
        "segformer_mit-b5_8xb2-160k_ade20k-640x640"]


def compare(stem, size=(67, 99), seed=0):
    model, _ = mmseg_support.build(stem)
    randomize_torch(model, seed)
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    x = np.random.default_rng(seed).standard_normal((2, 3, *size))
    with torch.no_grad():
        ref = model.double().encode_decode(torch.tensor(x), [{"img_shape": size}] * 2).numpy()
    ours, variables = from_mmseg(stem, state_dict)
    out = np.asarray(ours.apply(variables, x.transpose(0, 2, 3, 1).astype(np.float32))["out"])
    ref = ref.transpose(0, 2, 3, 1)
    assert out.shape == ref.shape
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err <= 1e-4, f"{stem}: max relative error {err:.2e}"


@pytest.mark.parametrize("stem", FAST)
def test_logits_equal_mmsegs(stem):
    compare(stem)


@pytest.mark.slow
@pytest.mark.parametrize("stem", SLOW)
def test_logits_equal_mmsegs_r101_ade20k_and_769(stem):
    compare(stem, size=(72, 88), seed=1)


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


def test_every_published_config_has_a_recipe():
    assert len(PUBLISHED) == 109
    for stem in PUBLISHED:
        recipe = mmseg_recipe(stem)
        assert recipe.model.split("_")[0] in stem
    c = mmseg_config("psanet_r50-d8_4xb4-80k_ade20k-512x512")
    assert c.model.name == "psanet_r50_d8" and tuple(c.model.head_kwargs.mask_size) == (66, 66)
    assert c.dataset.num_classes == 150 and tuple(c.dataset.eval_scale) == (2048, 512)
    assert c.dataset.eval_canvas is None and tuple(c.dataset.eval_label_canvas) == (2048, 2048)
    c = mmseg_config("ccnet_r101-d8_4xb2-80k_cityscapes-769x769")
    assert c.eval.mode == "slide" and c.model.align_corners and c.dataset.num_classes == 19


def test_bad_config_other_architecture_and_truncated_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not an mmseg config attnzoo rebuilds"):
        from_mmseg("upernet_r50_4xb2-80k_cityscapes-512x1024", {})
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


def test_the_docs_table_lists_every_published_checkpoint():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "pretrained.md").read_text()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for stem, (checkpoint, miou, _) in PUBLISHED.items():
        assert f"| `{stem}` | `{mmseg_recipe(stem).model}` | `{checkpoint}` | {miou:.2f} |" in text
        if "80k_cityscapes-512x1024" in stem or "160k_ade20k" in stem:
            assert f"| `{stem}` | `{checkpoint}` | {miou:.2f} |" in readme
