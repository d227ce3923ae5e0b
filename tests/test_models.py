"""Every registered model builds, runs and trains one jitted step; DANet equals its parts."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attnzoo import blocks, losses, models
from attnzoo.blocks.common import ConvNormAct
from attnzoo.heads import Classifier

SMALL = [n for n in models.list_models() if "_r18_d8" in n or n == "attention_unet_small"]
SAMPLE = [f"{h}_r50_d8" for h in models.HEADS] + ["danet_r101_d8", "ccnet_r101_d16"]
REST = [n for n in models.list_models() if n not in SMALL + SAMPLE]


def batch(seed=0, size=48, num_classes=4):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.standard_normal((2, size, size, 3)), jnp.float32)
    labels = rng.integers(0, num_classes, (2, size, size))
    labels[:, :3] = 255
    return images, jnp.asarray(labels)


def train_step(model):
    tx = optax.sgd(0.01, momentum=0.9)

    def step(variables, opt_state, images, labels, rng):
        def loss_fn(params):
            outputs, updates = model.apply(
                {**variables, "params": params}, images, train=True, mutable=["batch_stats"],
                rngs={"dropout": rng})
            total, _ = losses.combined_loss(outputs, labels, model.loss_terms())
            return total, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        upd, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], upd)
        return {**variables, **updates, "params": params}, opt_state, loss, grads

    return tx, step


def test_registry_names():
    names = models.list_models()
    for n in ("danet_r50_d8", "ccnet_r101_d8", "fcn_r50_d8", "nonlocal_r50_d8", "psa_r50_d8",
              "deeplabv3_r50_d8", "attention_unet", "danet_r18_d8"):
        assert n in names
    with pytest.raises(ValueError, match="name must be one of"):
        models.create("danet_r34_d8", num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        models.create("fcn_r18_d8", num_classes=0)


@pytest.mark.parametrize("name", SMALL)
def test_small_model_forward_and_jitted_gradient_step(name):
    model = models.create(name, num_classes=4)
    images, labels = batch()
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, images)
    out = jax.jit(model.apply)(variables, images)
    assert list(out) == ["out"] and out["out"].shape == (2, 48, 48, 4)
    tx, step = train_step(model)
    new_vars, _, loss, grads = jax.jit(step)(variables, tx.init(variables["params"]), images,
                                             labels, jax.random.key(2))
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert not np.allclose(jax.tree.leaves(new_vars["params"])[0],
                           jax.tree.leaves(variables["params"])[0])


@pytest.mark.parametrize(
    "name", SAMPLE + [pytest.param(n, marks=pytest.mark.slow) for n in REST if "_r18_" not in n])
def test_large_model_shapes(name):
    """r50 / r101 recipes: init, forward and the gradient step traced (shapes), not run."""
    model = models.create(name, num_classes=19)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x),
        images)
    assert jax.eval_shape(model.apply, variables, images)["out"].shape == (1, 64, 64, 19)
    tx, step = train_step(model)
    labels = jax.ShapeDtypeStruct((1, 64, 64), jnp.int32)
    opt_state = jax.eval_shape(tx.init, variables["params"])
    _, _, loss, _ = jax.eval_shape(step, variables, opt_state, images, labels, jax.random.key(0))
    assert loss.shape == ()


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"{h}_r50_d8" for h in models.HEADS]
                         + ["danet_r101_d8", "ccnet_r101_d8"]
                         + [n for n in models.list_models() if "_r18_d16" in n])
def test_models_run_slow(name):
    """Executed (not only traced): every head at r50, the r101 backbone, every r18 at d16."""
    model = models.create(name, num_classes=19)
    images, labels = batch(size=32, num_classes=19)
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, images)
    tx, step = train_step(model)
    _, _, loss, _ = jax.jit(step)(variables, tx.init(variables["params"]), images, labels,
                                  jax.random.key(2))
    assert np.isfinite(float(loss))


def _apply(module, variables, path, x, train):
    sub = {k: flax.traverse_util.unflatten_dict(
        {p[len(path):]: v for p, v in flax.traverse_util.flatten_dict(variables[k]).items()
         if p[:len(path)] == path}) for k in variables}
    sub = {k: v for k, v in sub.items() if v}
    if train:
        return module.apply(sub, x, train=True, mutable=["batch_stats"])[0]
    return module.apply(sub, x)


@pytest.mark.parametrize("train", [False, True])
def test_danet_outputs_are_the_composition_of_its_parts(train):
    model = models.create("danet_r18_d8", num_classes=4, head_kwargs={"dropout": 0.0})
    images, _ = batch(3, size=40)
    variables = model.init(jax.random.key(0), images)
    # Give the attention gammas a value so both branches matter.
    variables = flax.core.unfreeze(variables)
    variables["params"]["head"]["pam"]["gamma"] = jnp.array([0.7])
    variables["params"]["head"]["cam"]["gamma"] = jnp.array([-0.4])
    if train:  # the auxiliary FCN head keeps its dropout: it is not compared here
        out, _ = model.apply(variables, images, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(5)})
    else:
        out = model.apply(variables, images)

    feats = _apply(model.backbone, variables, ("backbone",), images, train)
    c4 = feats["c4"]
    h = ("head",)
    p = _apply(ConvNormAct(128, 3), variables, h + ("pam_in_conv",), c4, train)
    p = _apply(blocks.PositionAttention(128, key_channels=16), variables, h + ("pam",), p, train)
    p = _apply(ConvNormAct(128, 3), variables, h + ("pam_out_conv",), p, train)
    c = _apply(ConvNormAct(128, 3), variables, h + ("cam_in_conv",), c4, train)
    c = _apply(blocks.ChannelAttention(128), variables, h + ("cam",), c, train)
    c = _apply(ConvNormAct(128, 3), variables, h + ("cam_out_conv",), c, train)
    cls = Classifier(4, 0.0)
    up = lambda t: models.resize_logits(t, (40, 40))  # noqa: E731
    want = {"out": up(_apply(cls, variables, h + ("cls",), p + c, False))}
    if train:
        want["pam"] = up(_apply(cls, variables, h + ("pam_cls",), p, False))
        want["cam"] = up(_apply(cls, variables, h + ("cam_cls",), c, False))
        assert out.pop("aux").shape == want["out"].shape
    assert sorted(out) == sorted(want)
    for k in want:
        np.testing.assert_allclose(out[k], want[k], rtol=1e-4, atol=1e-4, err_msg=k)


def test_danet_memory_efficient_equals_dense():
    dense = models.create("danet_r18_d8", num_classes=4)
    bounded = models.create("danet_r18_d8", num_classes=4, memory_efficient=True)
    images, _ = batch(4, size=64)
    variables = flax.core.unfreeze(dense.init(jax.random.key(0), images))
    variables["params"]["head"]["pam"]["gamma"] = jnp.array([1.0])
    a = dense.apply(variables, images)["out"]
    b = bounded.apply(variables, images)["out"]
    assert np.abs(np.asarray(a - b)).max() / np.abs(np.asarray(a)).max() <= 1e-4


def test_bad_images_are_refused():
    model = models.create("fcn_r18_d8", num_classes=3)
    with pytest.raises(ValueError, match="images have 1 channels; the model takes 3"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="images must have rank 4"):
        model.init(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_odd_sizes_are_padded_and_cropped_back():
    model = models.create("attention_unet_small", num_classes=3)
    images = jnp.ones((1, 37, 45, 3))
    variables = model.init(jax.random.key(0), images)
    assert model.apply(variables, images)["out"].shape == (1, 37, 45, 3)
    fcn = models.create("fcn_r18_d8", num_classes=3)
    assert fcn.apply(fcn.init(jax.random.key(0), images), images)["out"].shape == (1, 37, 45, 3)


def test_head_and_aux_channels_override_the_defaults():
    model = models.create("fcn_r18_d8", num_classes=3, head_channels=24, aux_channels=12,
                          backbone_kwargs={"width": 8, "stem_width": 8})
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert params["head"]["cls"]["conv_seg"]["kernel"].shape == (1, 1, 24, 3)
    assert params["aux_head"]["cls"]["conv_seg"]["kernel"].shape == (1, 1, 12, 3)
    assert params["backbone"]["layer4_0"]["conv2"]["kernel"].shape[-1] == 64
    with pytest.raises(ValueError, match="head_channels"):
        models.create("fcn_r18_d8", num_classes=3, head_channels=0)


def test_classifier_dropout_drops_whole_channels():
    """Dropout2d semantics (mmsegmentation / official DANet): a channel is kept or zeroed at
    every position of an image, independently per image, and kept ones are scaled by 1/(1-p)."""
    p = 0.5
    x = jax.random.uniform(jax.random.key(0), (3, 6, 7, 32), minval=1.0, maxval=2.0)
    head = Classifier(5, dropout=p)
    variables = head.init(jax.random.key(1), x)
    _, state = head.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                          capture_intermediates=True, mutable=["intermediates"])
    dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0])
    kept = dropped != 0
    assert (kept == kept[:, :1, :1, :]).all(), "a channel is zeroed at some positions only"
    np.testing.assert_allclose(dropped[kept], np.asarray(x / (1 - p))[kept], rtol=1e-6)
    per_image = kept[:, 0, 0, :]
    assert 0 < per_image.mean() < 1 and not (per_image == per_image[:1]).all()
