"""Models: the engine step of each family, DANet equals its parts, overrides, the model and
head registries (the checks every registered model passes are in test_registries.py)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import blocks, engine, heads, models, sharding
from attnzoo.blocks.common import ConvNormAct
from attnzoo.heads import Classifier
from attnzoo.models import zoo

SMALL = [n for n in models.list_models() if "_r18_d8" in n or n == "attention_unet_small"]
# one model of each family's first model set (the quickstart's): the engine's train step is
# traced for each, in the default run for FCN and the families whose loss terms are other than
# the main and auxiliary cross-entropy (branches, image-level losses, no auxiliary head), in
# the slow set for the rest; every family's step runs on 1 and 8 devices in the slow set
# (test_steps.py; the shared `run` fixture trains a narrow danet_r18_d8 in the default run)
def _family_model(name):
    family = heads.get_family(name)
    model = next(iter(zoo.MODEL_SETS[family.model_sets[0]](family)))
    plain = family.auxiliary and not heads.HEADS.get(family.head).branches
    return pytest.param(model, marks=pytest.mark.slow) if plain and name != "fcn" else model


FAMILY_MODELS = [_family_model(f) for f in heads.list_families()]


def batch(seed=0, size=48, num_classes=4):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.standard_normal((2, size, size, 3)), jnp.float32)
    labels = rng.integers(0, num_classes, (2, size, size))
    labels[:, :3] = 255
    return images, jnp.asarray(labels)


def train_step(model, num_classes, size):
    """The engine's own train step (SGD 0.01, the model's loss terms) on one device, and a
    fresh state for it (initialised at ``size``)."""
    config = engine.default_config()
    config.dataset.num_classes = num_classes
    config.dataset.crop_size = (size, size)
    config.optimizer.schedule = "constant"
    tx, schedule = engine.make_optimizer(config.optimizer, config.num_steps)
    mesh = sharding.make_mesh(jax.devices()[:1])
    step = engine.make_train_step(model, tx, schedule, config, mesh)
    return step, (model, tx, config, mesh)


def test_registry_names():
    names = models.list_models()
    for n in ("danet_r50_d8", "ccnet_r101_d8", "fcn_r50_d8", "nonlocal_r50_d8", "polarized_r50_d8",
              "deeplabv3_r50_d8", "attention_unet", "danet_r18_d8", "segformer_mit_b2"):
        assert n in names
    with pytest.raises(ValueError, match="name must be one of"):
        models.create("danet_r34_d8", num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        models.create("fcn_r18_d8", num_classes=0)


# exhaustive (20 s each): every family's quickstart model takes the same step on 1 and 8 devices
# in the slow set (test_steps.py)
@pytest.mark.exhaustive
@pytest.mark.parametrize("name", SMALL)
def test_small_model_forward_and_jitted_gradient_step(name):
    model = models.create(name, num_classes=4)
    images, labels = batch()
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, images)
    out = jax.jit(model.apply)(variables, images)
    assert list(out) == ["out"] and out["out"].shape == (2, 48, 48, 4)
    step, init_args = train_step(model, 4, 48)
    state = engine.init_state(*init_args)
    before = jax.device_get(state.params)
    state, metrics = step(state, {"image": images, "label": labels})
    assert np.isfinite(float(metrics["loss"]))
    assert np.isfinite(float(metrics["grad_norm"]))  # the norm of any inf / NaN gradient is too
    assert not np.allclose(jax.tree.leaves(jax.device_get(state.params))[0],
                           jax.tree.leaves(before)[0])


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_the_engine_step_of_each_family_traces_with_its_loss_terms(name):
    """The family's loss terms (its head's branches, the auxiliary head) through the engine's
    train step, traced (shapes), not run: the forward of every model is traced in
    test_registries.py."""
    model = models.create(name, num_classes=19)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    step, init_args = train_step(model, 19, 64)
    state = engine.state.abstract_state(*init_args)
    labels = jax.ShapeDtypeStruct((1, 64, 64), jnp.int32)
    _, metrics = jax.eval_shape(step, state, {"image": images, "label": labels})
    assert metrics["loss"].shape == ()
    assert {f"{t['output']}/{t['loss']}" for t in model.loss_terms()} <= set(metrics)


def _run_slow_param(name):
    return pytest.param(name, marks=pytest.mark.slow if name == "danet_r18_d16"
                        else pytest.mark.exhaustive)


# one in the slow set, the rest exhaustive (20-47 s each): every head at r50 and the r101
# backbone execute in test_mmseg.py's parity tests
@pytest.mark.parametrize("name", [_run_slow_param(n) for n in (
    [f"{f}_r50_d8" for f in heads.list_families() if f"{f}_r50_d8" in models.list_models()]
    + ["danet_r101_d8", "ccnet_r101_d8"]
    + [n for n in models.list_models() if "_r18_d16" in n])])
def test_models_run_slow(name):
    """Executed (not only traced): every head at r50, the r101 backbone, every r18 at d16."""
    model = models.create(name, num_classes=19)
    images, labels = batch(size=32, num_classes=19)
    step, init_args = train_step(model, 19, 32)
    _, metrics = step(engine.init_state(*init_args), {"image": images, "label": labels})
    assert np.isfinite(float(metrics["loss"]))


def _apply(module, variables, path, x, train):
    sub = {k: flax.traverse_util.unflatten_dict(
        {p[len(path):]: v for p, v in flax.traverse_util.flatten_dict(variables[k]).items()
         if p[:len(path)] == path}) for k in variables}
    sub = {k: v for k, v in sub.items() if v}
    if train:
        return module.apply(sub, x, train=True, mutable=["batch_stats"])[0]
    return module.apply(sub, x)


@pytest.mark.slow  # 9 s each; DANet's parity with mmseg and its registry traces run by default
@pytest.mark.parametrize("train", [False, True])
def test_danet_outputs_are_the_composition_of_its_parts(train):
    model = models.create("danet_r18_d8", num_classes=4, head_kwargs={"dropout": 0.0},
                          head_channels=32, backbone_kwargs={"width": 16, "stem_width": 16})
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
    p = _apply(ConvNormAct(32, 3), variables, h + ("pam_in_conv",), c4, train)
    p = _apply(blocks.PositionAttention(32, key_channels=4), variables, h + ("pam",), p, train)
    p = _apply(ConvNormAct(32, 3), variables, h + ("pam_out_conv",), p, train)
    c = _apply(ConvNormAct(32, 3), variables, h + ("cam_in_conv",), c4, train)
    c = _apply(blocks.ChannelAttention(32), variables, h + ("cam",), c, train)
    c = _apply(ConvNormAct(32, 3), variables, h + ("cam_out_conv",), c, train)
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


@pytest.mark.slow
def test_danet_memory_efficient_equals_dense():
    narrow = dict(head_channels=32, aux_channels=8, backbone_kwargs={"width": 8, "stem_width": 8})
    dense = models.create("danet_r18_d8", num_classes=4, **narrow)
    bounded = models.create("danet_r18_d8", num_classes=4, memory_efficient=True, **narrow)
    images, _ = batch(4, size=64)
    variables = flax.core.unfreeze(dense.init(jax.random.key(0), images))
    variables["params"]["head"]["pam"]["gamma"] = jnp.array([1.0])
    a = dense.apply(variables, images)["out"]
    b = bounded.apply(variables, images)["out"]
    assert np.abs(np.asarray(a - b)).max() / np.abs(np.asarray(a)).max() <= 1e-4


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


def test_models_are_registered_descriptions():
    spec = models.get_spec("danet_r101_d16")
    assert isinstance(spec, models.EncoderDecoderSpec)
    assert (spec.backbone, spec.head, spec.output_stride) == ("resnet101_v1c", "danet", 16)
    assert spec.head_kwargs == {"channels": 512} and spec.aux_kwargs["channels"] == 256
    assert models.get_spec("deeplabv3_r18_d8").head == "aspp"
    assert models.get_spec("attention_unet_small").widths == (16, 32, 64, 128)
    with pytest.raises(ValueError, match="model 'danet_r18_d8' is registered twice"):
        models.register("danet_r18_d8", spec)


def test_a_new_model_is_one_registered_description():
    name = "test_gcnet_se_resnet18_d16"
    models.register(name, models.EncoderDecoderSpec(
        backbone="resnet18_v1b", head="gcnet", output_stride=16,
        backbone_kwargs={"attn": "se", "width": 8}, head_kwargs={"channels": 16}, aux_head=None))
    model = models.create(name, num_classes=3)
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(
        (1, 64, 64, 3), jnp.float32))["params"]
    assert "aux_head" not in variables and "attn" in variables["backbone"]["layer1_0"]
    assert variables["head"]["attention"]  # the GC block of the head
    assert [t["output"] for t in model.loss_terms()] == ["out"]
    assert name in models.list_models()


def test_heads_declare_their_loss_terms():
    assert heads.list_heads() == sorted(heads.list_heads())
    assert {heads.get_family(f).head for f in heads.list_families()} <= set(heads.list_heads())
    assert heads.DANetHead.branches == (("pam", 1.0), ("cam", 1.0))
    assert heads.FCNHead.branches == ()
    terms = models.create("danet_r18_d8", num_classes=3).loss_terms()
    assert [(t["output"], t["weight"]) for t in terms] == [
        ("out", 1.0), ("pam", 1.0), ("cam", 1.0), ("aux", 0.4)]
    ocrnet = models.create("ocrnet_r50_d8", num_classes=3)  # its own first stage, no aux head
    assert ocrnet.aux_head is None and [(t["output"], t["weight"]) for t in ocrnet.loss_terms()] \
        == [("out", 1.0), ("regions", 0.4)]
    assert heads.create("polarized", num_classes=3, mode="sequential").mode == "sequential"
    assert heads.create("ccnet", num_classes=3, recurrence=1).recurrence == 1
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        heads.create("fcn", num_classes=0)
    with pytest.raises(ValueError, match="features must have rank 4"):
        head = heads.create("fcn", num_classes=3, channels=8)
        head.init(jax.random.key(0), jnp.zeros((8, 8, 4)))


def test_memory_efficient_reaches_only_heads_that_have_it():
    assert models.create("danet_r18_d8", num_classes=3, memory_efficient=True).head.memory_efficient
    assert models.create("nonlocal_r18_d8", num_classes=3,
                         memory_efficient=True).head.memory_efficient
    assert not hasattr(models.create("fcn_r18_d8", num_classes=3, memory_efficient=True).head,
                       "memory_efficient")


@pytest.mark.slow  # 5 s; EMANet's parity with mmseg runs in the default set
def test_emanet_bases_move_by_their_momentum_in_training_only():
    """mmseg's EMAModule: the stored bases start as unit columns, the EM runs from them, and a
    training call moves them to (1 - m) mu + m normalize(mean over the batch of the final
    bases); inference leaves them. The frozen projection is state (no parameters, no
    gradient); the head's gradient reaches its input convolution."""
    from attnzoo import ops
    from attnzoo.heads.emanet import EMAModule
    from attnzoo.ops.em import normalize

    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 5, 6, 8)), jnp.float32)
    module = EMAModule(num_bases=4, num_stages=2, momentum=0.3)
    variables = jax.jit(module.init)(jax.random.key(0), x)
    bases = variables["batch_stats"]["bases"]
    np.testing.assert_allclose(np.linalg.norm(bases, axis=0), 1.0, rtol=1e-6)
    recon, updates = jax.jit(lambda v: module.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables)
    want_recon, mu = ops.em_attention(x.reshape(3, 30, 8), bases, 2)
    # the module jitted, the reference op by op: float32 rounding apart
    np.testing.assert_allclose(recon, want_recon.reshape(x.shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["bases"],
                               0.7 * bases + 0.3 * normalize(mu.mean(0), axis=0), rtol=1e-5,
                               atol=1e-6)
    _, updates = jax.jit(lambda v: module.apply(v, x, mutable=["batch_stats"]))(variables)
    np.testing.assert_array_equal(updates["batch_stats"]["bases"], bases)

    head = heads.create("emanet", num_classes=3, channels=8, num_bases=4)
    variables = jax.jit(head.init)(jax.random.key(0), x)
    assert "ema_mid_conv" not in variables["params"]
    assert set(variables["batch_stats"]["ema_mid_conv"]) == {"kernel", "bias"}
    grads = jax.jit(jax.grad(lambda p: head.apply(
        {**variables, "params": p}, x, train=True, mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(1)})[0]["out"].sum()))(variables["params"])
    assert np.abs(np.asarray(grads["ema_in_conv"]["conv"]["kernel"])).sum() > 0
    with pytest.raises(ValueError, match="momentum must be in"):
        heads.create("emanet", num_classes=3, momentum=1.5)


def test_attention_unet_is_built_from_a_config_like_any_model():
    config = engine.default_config()
    config.model.name = "attention_unet_small"
    assert isinstance(engine.build_model(config), models.AttentionUNet)
    config.model.backbone_kwargs = {"attn": "se"}
    with pytest.raises(ValueError, match=r"model 'attention_unet_small' \(Attention U-Net, "
                                         r"levels .*\) has no field 'backbone_kwargs'"):
        engine.build_model(config)


@pytest.mark.slow
def test_bfloat16_logits_are_the_float32_ones_to_3_percent():
    """``dtype=bfloat16`` (float32 parameters, softmax and BN statistics) against float32, same
    variables (attention gammas set to 0.5 so that both attention branches count): bf16 rounds
    to 2^-8 relative per operation; over ~20 layers the logits stay within 3% of their largest
    magnitude (measured 0.9%) and almost every pixel keeps its class (measured 98.6%)."""
    images = jax.random.normal(jax.random.key(0), (2, 96, 80, 3))
    float32 = models.create("danet_r18_d8", num_classes=19)
    bfloat16 = models.create("danet_r18_d8", num_classes=19, dtype=jnp.bfloat16)
    variables = float32.init(jax.random.key(1), images)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 0.5 if "gamma" in jax.tree_util.keystr(path) else a, variables)
    want = np.asarray(jax.jit(float32.apply)(variables, images)["out"])
    got = jax.jit(bfloat16.apply)(variables, images)["out"]
    assert got.dtype == jnp.bfloat16
    got = np.asarray(got, np.float32)
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
