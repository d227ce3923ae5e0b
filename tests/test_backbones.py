"""Backbone variants: output strides, attention plug-in, BN modes, bad fields (the checks every
registered backbone passes are in test_registries.py)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import backbones

ALL = [n for n in backbones.list_backbones() if not n.startswith("mit_")]  # MiT: test_segformer


def shapes(module, size=64):
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    return jax.eval_shape(module.apply, variables, x)


def test_registry_has_every_variant():
    for depth in (18, 34, 50, 101, 152):
        for variant in ("v1b", "v1c", "v1d"):
            assert f"resnet{depth}_{variant}" in ALL
    assert {"skresnet18", "skresnet34", "skresnet50", "resnest50d", "resnest101e"} <= set(ALL)
    with pytest.raises(ValueError, match="name must be one of"):
        backbones.create("resnet51")


@pytest.mark.parametrize("name", ["resnet18_v1b", "resnet50_v1c", "resnest50d", "skresnet18"])
def test_feature_strides_and_channels_at_every_output_stride(name):
    """Output strides 8 and 16 dilate the last stages (32, every backbone's default, is in
    test_registries.py)."""
    for output_stride in (8, 16, 32):
        module = backbones.create(name, output_stride=output_stride)
        out = shapes(module)
        info = module.feature_info()
        assert list(out) == ["c1", "c2", "c3", "c4"]
        for level, (channels, stride) in info.items():
            assert out[level].shape == (2, 64 // stride, 64 // stride, channels), (level, name)
        assert info["c4"][1] == output_stride and info["c1"][1] == 4


def test_narrow_backbone_scales_every_stage():
    module = backbones.create("resnet50_v1c", output_stride=8, width=16, stem_width=8)
    out = shapes(module)
    for level, channels in zip(("c1", "c2", "c3", "c4"), (64, 128, 256, 512)):
        assert module.feature_info()[level] == (channels, 4 if level == "c1" else 8)
        assert out[level].shape[-1] == channels
    with pytest.raises(ValueError, match="width"):
        shapes(backbones.create("resnet18_v1c", width=0))


@pytest.mark.parametrize("attn", ["se", "eca", "cbam", "gc", "coord", "scse", "ese"])
def test_attention_in_every_block(attn):
    """Traced: the blocks themselves run in test_registries.py."""
    module = backbones.create("resnet18_v1c", attn=attn)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    blocks_with_attn = [k for k, v in variables["params"].items() if "attn" in v]
    assert len(blocks_with_attn) == 8  # 2 + 2 + 2 + 2 residual blocks
    assert jax.eval_shape(module.apply, variables, x)["c4"].shape == (1, 1, 1, 512)


def test_attention_kwargs_reach_the_block():
    module = backbones.create("resnet50_v1b", attn="se", attn_kwargs={"rd_ratio": 0.25})
    params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert params["layer1_0"]["attn"]["fc1"]["kernel"].shape == (1, 1, 256, 64)


@pytest.mark.slow
def test_frozen_bn_never_uses_or_updates_batch_statistics():
    module = backbones.create("resnet18_v1b", frozen_bn=True, layers=(1, 1, 1, 1))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    variables = jax.jit(module.init)(jax.random.key(0), x)
    train = jax.jit(lambda m, v: m.apply(v, x, train=True, mutable=["batch_stats"]),
                    static_argnums=0)
    out, updates = train(module, variables)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(variables["batch_stats"])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(out["c4"], jax.jit(module.apply)(variables, x)["c4"], rtol=1e-6)
    trainable = backbones.create("resnet18_v1b", layers=(1, 1, 1, 1))
    _, updates = train(trainable, variables)
    assert not np.allclose(updates["batch_stats"]["bn1"]["mean"],
                           variables["batch_stats"]["bn1"]["mean"])


@pytest.mark.slow
def test_multi_grid_changes_last_stage_dilations_only():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 64, 64, 3)), jnp.float32)
    narrow = {"width": 8, "stem_width": 8}
    plain = backbones.create("resnet18_v1c", output_stride=8, **narrow)
    grid = backbones.create("resnet18_v1c", output_stride=8, multi_grid=(1, 2), **narrow)
    variables = plain.init(jax.random.key(0), x)
    a, b = plain.apply(variables, x), grid.apply(variables, x)
    np.testing.assert_array_equal(a["c3"], b["c3"])
    assert not np.allclose(a["c4"], b["c4"])
    with pytest.raises(ValueError, match="multi_grid has 3 rates"):
        backbones.create("resnet18_v1c", multi_grid=(1, 2, 4))


def test_bad_fields_are_refused():
    with pytest.raises(ValueError, match="output_stride must be one of"):
        backbones.create("resnet18_v1b", output_stride=4)
    with pytest.raises(ValueError, match="name must be one of"):
        backbones.create("resnet18_v1b", attn="squeeze")


@pytest.mark.slow  # 8 s; the 1-vs-8-device engine steps (test_steps) check it too
def test_sharded_training_batch_norm_uses_the_global_batch():
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    module = backbones.create("resnet18_v1c", output_stride=8)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((8, 32, 32, 3)), jnp.float32)
    variables = module.init(jax.random.key(0), x)

    def train_apply(variables, x):
        return module.apply(variables, x, train=True, mutable=["batch_stats"])

    want, want_stats = jax.jit(train_apply)(variables, x)
    got, got_stats = jax.jit(train_apply)(
        jax.device_put(variables, NamedSharding(mesh, PartitionSpec())),
        jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))),
    )
    # Sharded reductions sum in another order: compare as the parity tests do,
    # max |sharded - single| / max |single| <= 1e-4.
    def rel(a, b):
        return np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max()

    assert rel(got["c4"], want["c4"]) <= 1e-4
    flat_got = flax.traverse_util.flatten_dict(got_stats)
    for key, value in flax.traverse_util.flatten_dict(want_stats).items():
        assert rel(flat_got[key], value) <= 1e-4, key


@pytest.mark.slow
def test_residual_blocks_are_modules_honouring_train():
    """One module per block kind; ``train=True`` uses and updates batch statistics."""
    from attnzoo.backbones import Bottleneck, ResidualBlock

    assert backbones.create("resnest14d").block_cls is backbones.ResNeStBottleneck
    assert backbones.create("skresnet18").block_cls is backbones.SelectiveKernelBasic
    block = Bottleneck(8, downsample=True, attn="eca")
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 8, 16)), jnp.float32)
    variables = block.init(jax.random.key(0), x)
    assert sorted(variables["params"]) == ["attn", "bn1", "bn2", "bn3", "conv1", "conv2", "conv3",
                                           "downsample_0", "downsample_1"]
    _, updates = block.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(updates["batch_stats"]["bn1"]["mean"], 0.0)
    assert not np.allclose(block.apply(variables, x, train=True, mutable=["batch_stats"])[0],
                           block.apply(variables, x))
    with pytest.raises(ValueError, match="block_cls must be a ResidualBlock subclass"):
        backbones.create("resnet18_v1b", block_cls=ResidualBlock.__call__)


@pytest.mark.slow
def test_a_backbone_converted_before_the_restructuring_loads(tmp_path):
    """``fixtures/backbone_v0``: an SK-ResNet-18 written by ``save_backbone`` at 90627af, whose
    JSON names the block kind by string with ``sk_kwargs`` at the top level. It loads with
    the block class and gives the features it gave then (same float32 computation)."""
    from pathlib import Path

    from attnzoo.convert import load_backbone, save_backbone

    fixture = Path(__file__).resolve().parent / "fixtures" / "backbone_v0"
    module, variables = load_backbone(fixture)
    assert module.block_cls is backbones.SelectiveKernelBasic
    expected = np.load(fixture / "expected.npz")
    np.testing.assert_allclose(np.asarray(module.apply(variables, expected["image"])["c4"]),
                               expected["c4"], rtol=1e-6, atol=1e-6)
    again, _ = load_backbone(save_backbone(tmp_path / "again", module, variables))
    assert again == module


@pytest.mark.parametrize("name,fields,match", [
    ("swin_t", {"embed_dim": 100}, r"stage 1's width 100 must divide by its num_heads 3"),
    ("mit_b0", {"num_heads": (1, 2, 5, 7)}, r"stage 4's width 256 must divide by its num_heads 7"),
    ("svt_s", {"embed_dims": (64, 128, 250, 512)},
     r"stage 3's width 250 must divide by its num_heads 8"),
    ("mit_b0", {"depths": (2, 2, 2)}, r"depths must give 4 stages"),
])
def test_hierarchical_transformers_refuse_stages_that_do_not_fit(name, fields, match):
    with pytest.raises(ValueError, match=match):
        backbones.create(name, **fields)
