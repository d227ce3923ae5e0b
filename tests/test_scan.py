"""A ViT's layers and a MiT's stages as ``nn.scan`` (``scan_layers``,
``config.model.scan_layers``): the same features and gradients as the unrolled layers after
converting the parameters, the converters both ways, a plain checkpoint into a scanned run, and
what a resume may change."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import backbones, engine, models, sharding
from attnzoo.backbones.vit import match_layer_form, stack_layers, unstack_layers
from attnzoo.engine.workdir import shaping_differences

VIT = dict(embed_dim=48, depth=4, num_heads=3, patch_size=8, img_size=(32, 32),
           out_indices=(1, 3), final_norm=True)


def _tree_close(a, b, rel):
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(a))
    worst = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b)))
    assert worst <= rel * scale, (worst, scale)


def _features_loss(module, variables, x, key):
    out = module.apply(variables, x, train=True, rngs={"dropout": key})
    return sum(jnp.sum(v ** 2) for v in out.values())


@pytest.mark.slow
@pytest.mark.parametrize("policy", [None, "nothing"])
def test_scanned_layers_equal_the_unrolled_ones(policy):
    plain = backbones.create("vit_t16", dropout=0.1, drop_path_rate=0.2, **VIT)
    scanned = backbones.create("vit_t16", scan_layers=True, remat=policy, dropout=0.1,
                               drop_path_rate=0.2, **VIT)
    x = jax.random.normal(jax.random.key(0), (2, 40, 48, 3))  # padded to the patch grid
    variables = plain.init(jax.random.key(1), x)
    shapes = jax.eval_shape(scanned.init, jax.random.key(1), x)
    stacked = match_layer_form(variables, shapes)
    assert jax.tree.map(lambda a: a.shape, stacked) == jax.tree.map(lambda a: a.shape, shapes)
    assert stacked["params"]["layers"]["attn"]["query"]["kernel"].shape == (4, 48, 48)
    # inference: the same features (the final norm on the last, the class token dropped)
    want, got = plain.apply(variables, x), scanned.apply(stacked, x)
    assert set(want) == set(got) == {"c1", "c2"}
    for k in want:
        _tree_close(want[k], got[k], 1e-5)
    # training without dropout: the same gradients, layer by layer (the scan draws its
    # dropout keys per iteration, the unrolled layers per name: with dropout the draws differ)
    plain0, scanned0 = (m.clone(dropout=0.0, drop_path_rate=0.0) for m in (plain, scanned))
    key = jax.random.key(2)
    g_plain = jax.grad(lambda v: _features_loss(plain0, v, x, key))(variables)
    g_scan = jax.grad(lambda v: _features_loss(scanned0, v, x, key))(stacked)
    _tree_close(match_layer_form(g_plain, shapes), g_scan, 1e-5)
    # with dropout and per-layer drop-path rates it trains (finite, and the draws matter)
    loss = jax.jit(lambda v, k: _features_loss(scanned, v, x, k))
    a, b = loss(stacked, key), loss(stacked, jax.random.key(5))
    assert np.isfinite(float(a)) and float(a) != float(b)


@pytest.mark.slow
@pytest.mark.parametrize("policy", [None, "dots"])
def test_scanned_mit_stages_equal_the_unrolled_ones(policy):
    """A MiT of 2, 3, 1, 2 blocks per stage, each stage one scan (``block_<i>`` stacked): the
    features and gradients of the unrolled blocks (1e-5 of the largest), with drop path."""
    kw = dict(embed_dims=(16, 32, 40, 64), depths=(2, 3, 1, 2), num_heads=(1, 2, 5, 8),
              drop_path_rate=0.2)
    plain = backbones.create("mit_b0", **kw)
    scanned = backbones.create("mit_b0", scan_layers=True, remat=policy, **kw)
    x = jax.random.normal(jax.random.key(0), (2, 64, 48, 3))
    variables = plain.init(jax.random.key(1), x)
    shapes = jax.eval_shape(scanned.init, jax.random.key(1), x)
    stacked = match_layer_form(variables, shapes)
    assert jax.tree.map(lambda a: a.shape, stacked) == jax.tree.map(lambda a: a.shape, shapes)
    assert stacked["params"]["block_1"]["mlp"]["fc1"]["kernel"].shape == (3, 32, 128)
    assert "block_1_0" not in stacked["params"]
    want, got = plain.apply(variables, x), scanned.apply(stacked, x)
    for k in ("c1", "c2", "c3", "c4"):
        _tree_close(want[k], got[k], 1e-5)
    plain0, scanned0 = (m.clone(drop_path_rate=0.0) for m in (plain, scanned))
    key = jax.random.key(2)
    g_plain = jax.grad(lambda v: _features_loss(plain0, v, x, key))(variables)
    g_scan = jax.grad(lambda v: _features_loss(scanned0, v, x, key))(stacked)
    _tree_close(match_layer_form(g_plain, shapes), g_scan, 1e-5)
    loss = jax.jit(lambda v, k: _features_loss(scanned, v, x, k))  # per-block drop-path rates
    a, b = loss(stacked, key), loss(stacked, jax.random.key(5))
    assert np.isfinite(float(a)) and float(a) != float(b)


def test_layer_converters_both_ways():
    rng = np.random.default_rng(0)
    tree = {"backbone": {"cls_token": rng.standard_normal((1, 1, 4)),
                         **{f"layers_{i}": {"ln1": {"scale": rng.standard_normal(4)},
                                            "mlp": {"fc1": {"kernel": rng.standard_normal((4, 8))}}}
                            for i in range(3)}},
            "head": {"layers_0": {"w": rng.standard_normal(2)}}}
    stacked = stack_layers(tree)
    assert stacked["backbone"]["layers"]["mlp"]["fc1"]["kernel"].shape == (3, 4, 8)
    np.testing.assert_array_equal(stacked["backbone"]["layers"]["ln1"]["scale"][2],
                                  tree["backbone"]["layers_2"]["ln1"]["scale"])
    assert stacked["backbone"]["cls_token"] is tree["backbone"]["cls_token"]
    back = unstack_layers(stacked)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    jax.tree.map(np.testing.assert_array_equal, back, tree)
    # into a target's form, each sub-tree as the target has it (the head stays unrolled)
    target = {"backbone": stacked["backbone"], "head": tree["head"]}
    mixed = match_layer_form(tree, target)
    assert "layers" in mixed["backbone"] and "layers_0" in mixed["head"]
    jax.tree.map(np.testing.assert_array_equal, match_layer_form(mixed, tree), tree)
    # a tree already in the target's form is left alone, even beside a sub-module that is
    # itself called "layers"
    both = {"layers": {"w": np.zeros(2)}, "layers_0": {"w": np.ones(2)}}
    same = match_layer_form(both, both)
    assert same.keys() == both.keys() and all(same[k]["w"] is both[k]["w"] for k in both)
    # a MiT's stages: each block_<i>_<j> run into the block_<i> stack the target holds
    mit = {"block_0_0": {"w": np.zeros(2)}, "block_0_1": {"w": np.ones(2)},
           "block_1_0": {"w": np.full(3, 2.0)}, "norm_0": {"w": np.zeros(2)}}
    target = {"block_0": {"w": np.zeros((2, 2))}, "block_1": {"w": np.zeros((1, 3))},
              "norm_0": {"w": np.zeros(2)}}
    stages = match_layer_form(mit, target)
    assert sorted(stages) == ["block_0", "block_1", "norm_0"]
    np.testing.assert_array_equal(stages["block_0"]["w"], [[0, 0], [1, 1]])
    jax.tree.map(np.testing.assert_array_equal, match_layer_form(stages, mit), mit)
    with pytest.raises(ValueError, match=r"numbered 0..n-1 to stack; got \[0, 2\]"):
        stack_layers({"layers_0": {"w": 1.0}, "layers_2": {"w": 2.0}})
    with pytest.raises(ValueError, match=r"not a stack of layers"):
        unstack_layers({"layers": {"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}})


def test_scan_refused_where_there_is_none():
    with pytest.raises(ValueError,
                       match=r"scan_layers: backbone 'resnet18_v1c'.*Vision Transformers and MiT"):
        models.create("danet_r18_d8", num_classes=3, scan_layers=True)


MODELS = {  # narrow: a Segmenter ViT of 2 layers, a SegFormer MiT of 2, 2, 1, 2 blocks
    "segmenter_vit_t_mask": dict(
        backbone_kwargs={"embed_dim": 48, "depth": 2, "patch_size": 8, "img_size": (32, 32),
                         "out_indices": (1,)}, head_kwargs={"num_layers": 1}),
    "segformer_mit_b0": dict(
        backbone_kwargs={"embed_dims": (16, 32, 40, 64), "depths": (2, 2, 1, 2)},
        head_channels=32)}


def _config(scan, name="segmenter_vit_t_mask"):
    c = engine.default_config()
    c.model.name = name
    c.model.update(MODELS[name])
    c.model.scan_layers = scan
    c.dataset.num_classes = 3
    c.dataset.crop_size = (32, 32)
    return c


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_a_plain_checkpoint_initialises_a_scanned_run(tmp_path, name):
    from attnzoo.engine.checkpoint import save_pretrained
    from attnzoo.engine.train import load_pretrained

    plain_config, scan_config = _config(False, name), _config(True, name)
    plain = engine.build_model(plain_config)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    variables = plain.init(jax.random.key(7), x)
    save_pretrained(tmp_path / "plain", variables, plain_config)
    scanned = engine.build_model(scan_config)
    tx, _ = engine.make_optimizer(scan_config.optimizer, scan_config.num_steps)
    fresh = engine.init_state(scanned, tx, scan_config, sharding.make_mesh(jax.devices()[:1]))
    assert {"layers", "block_0"} & set(fresh.params["backbone"])
    loaded = load_pretrained(fresh, str(tmp_path / "plain"))
    _tree_close(plain.apply(variables, x)["out"], scanned.apply(loaded.variables(), x)["out"],
                1e-5)
    # and a scanned run's checkpoint back into a plain one
    save_pretrained(tmp_path / "scanned", loaded.variables(), scan_config)
    fresh_plain = engine.init_state(plain, tx, plain_config, sharding.make_mesh(jax.devices()[:1]))
    again = load_pretrained(fresh_plain, str(tmp_path / "scanned"))
    jax.tree.map(np.testing.assert_array_equal, again.params, variables["params"])


def test_resume_may_change_remat_not_the_layer_form():
    saved = json.loads(_config(False).to_json_best_effort())  # as config.json holds it
    changed = _config(False)
    changed.model.remat.transformer = "nothing"
    assert shaping_differences(saved, changed) == []
    assert shaping_differences(saved, _config(True)) == ["model.scan_layers: False -> True"]
