"""SegFormer: spatial-reduction attention against a dense formula, the MiT encoder and the
all-MLP head against Hugging Face's own ``SegformerForSemanticSegmentation`` (random weights,
odd image sizes, eval mode; the hub's file layout and transformers 5.x's), any head on MiT,
training (bfloat16; on 8 devices with every family in test_steps.py), the convert command and
the errors.

Tolerance: attnzoo's float32 outputs vs the reference in float64, max |difference| <= 1e-4 x
max |reference| (the parity bound of the backbone and mmseg tests). mmseg's segformer configs
are compared in ``test_mmseg.py``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import randomize_torch

from attnzoo import backbones, blocks, engine, models, sharding
from attnzoo.blocks.common import DropPath
from attnzoo.convert import ConversionError, from_transformers, transformers_config_fields
from attnzoo.engine import optim
from attnzoo.engine.config import from_fields
from attnzoo.models.specs import EncoderDecoderSpec

TINY = dict(num_labels=5, hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 2, 4],
            depths=[1, 2, 1, 1], decoder_hidden_size=16)


def relative_error(ours, ref):
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def test_spatial_reduction_attention_equals_the_formula():
    """Against eq. (2) in numpy float64 with the block's own weights: K, V from a stride-R
    conv (written as patches) + LayerNorm, softmax(Q K^T / sqrt(d)) V per head."""
    c, heads, r = 12, 3, 2
    block = blocks.create("sra", channels=c, num_heads=heads, sr_ratio=r)
    x = np.random.default_rng(0).standard_normal((2, 6, 8, c)).astype(np.float32)
    variables = block.init(jax.random.key(1), x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64),
                     jax.tree.map(lambda a: a + 0.1, variables["params"]))  # non-zero biases
    out = np.asarray(block.apply({"params": jax.tree.map(jnp.asarray, p)}, x))

    xd = x.astype(np.float64)
    b, h, w, _ = x.shape
    patches = xd.reshape(b, h // r, r, w // r, r, c).transpose(0, 1, 3, 2, 4, 5)
    kv = np.einsum("bijyxc,yxco->bijo", patches, p["sr"]["kernel"]) + p["sr"]["bias"]
    kv = kv.reshape(b, -1, c)
    mu, var = kv.mean(-1, keepdims=True), kv.var(-1, keepdims=True)
    kv = (kv - mu) / np.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
    lin = lambda t, name: t @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    q = lin(xd.reshape(b, -1, c), "query").reshape(b, -1, heads, c // heads)
    k = lin(kv, "key").reshape(b, -1, heads, c // heads)
    v = lin(kv, "value").reshape(b, -1, heads, c // heads)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(c // heads)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ref = lin(np.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, -1, c), "proj").reshape(b, h, w, c)
    assert relative_error(out, ref) <= 1e-5


def test_spatial_reduction_attention_memory_efficient_is_exact_and_r1_has_no_reduction():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 16, 12, 8)), jnp.float32)
    dense = blocks.create("sra", channels=8, num_heads=2, sr_ratio=4)
    chunked = dense.clone(memory_efficient=True, query_chunk_size=40, key_chunk_size=5)
    variables = dense.init(jax.random.key(0), x)
    np.testing.assert_allclose(chunked.apply(variables, x), dense.apply(variables, x),
                               rtol=1e-5, atol=1e-6)
    plain = blocks.create("sra", channels=8, num_heads=2, sr_ratio=1)
    assert set(plain.init(jax.random.key(0), x)["params"]) == {"query", "key", "value", "proj"}
    with pytest.raises(ValueError, match="smaller than sr_ratio=8"):
        blocks.create("sra", channels=8, sr_ratio=8).init(jax.random.key(0), x[:, :4])


def test_drop_path_drops_whole_samples_in_training_only():
    x = jnp.ones((64, 3, 3, 2))
    layer = DropPath(0.25)
    np.testing.assert_array_equal(layer.apply({}, x), x)
    y = np.asarray(layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
    per_sample = y.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {np.float32(0.0), np.float32(1 / 0.75)}
    assert np.all(per_sample.min(1) == per_sample.max(1))  # a sample is kept or dropped whole
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    with pytest.raises(ValueError, match="rate must be in"):
        DropPath(1.0)


@pytest.mark.parametrize("name", ["mit_b0"] + [pytest.param(f"mit_b{k}", marks=pytest.mark.slow)
                                                for k in range(1, 6)])
def test_mit_sizes_return_four_stages_at_strides_4_to_32(name):
    mit = backbones.create(name)
    x = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
    variables = jax.eval_shape(mit.init, jax.random.key(0), x)
    feats = jax.eval_shape(mit.apply, variables, x)
    for key, (channels, stride) in mit.feature_info().items():
        assert feats[key].shape == (1, 64 // stride, 96 // stride, channels)
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables))
    # the paper's encoder sizes (Table 6): 3.4, 13.1, 24.2, 44.0, 60.8, 81.4 M
    expected = {"mit_b0": 3.3, "mit_b1": 13.2, "mit_b2": 24.2, "mit_b3": 44.1, "mit_b4": 60.8,
                "mit_b5": 81.4}[name]
    assert abs(params / 1e6 - expected) < 0.15
    with pytest.raises(ValueError, match="has no field"):
        backbones.create(name, output_stride=8)


def test_the_segformer_head_reads_a_list_of_stages():
    from attnzoo import heads

    head = heads.create("segformer", num_classes=3, channels=8)
    feats = [jnp.ones((1, 16 // s, 16 // s, c)) for s, c in ((1, 4), (2, 6), (4, 8), (8, 10))]
    variables = head.init(jax.random.key(0), feats)
    assert head.apply(variables, feats)["out"].shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="reads a list of backbone features"):
        head.init(jax.random.key(0), feats[-1])


def _hf_model(seed=0, **config):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    cfg = transformers.SegformerConfig(**{**TINY, **config})
    model = transformers.SegformerForSemanticSegmentation(cfg).eval()
    return randomize_torch(model, seed)


def _hf_reference(model, images_nchw):
    import torch

    with torch.no_grad():
        out = model.double()(pixel_values=torch.tensor(images_nchw), output_hidden_states=True)
        logits = torch.nn.functional.interpolate(out.logits, size=images_nchw.shape[2:],
                                                 mode="bilinear", align_corners=False)
    stages = [h.numpy().transpose(0, 2, 3, 1) for h in out.hidden_states]
    return stages, logits.numpy().transpose(0, 2, 3, 1)


def _check_parity(model, variables, x, stages, logits):
    xs = jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32)
    feats = model.bind(variables).backbone(xs)
    for i, ref in enumerate(stages):
        assert feats[f"c{i + 1}"].shape == ref.shape
        assert relative_error(feats[f"c{i + 1}"], ref) <= 1e-4, f"stage {i}"
    out = model.apply(variables, xs)["out"]
    assert out.shape == logits.shape and relative_error(out, logits) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("size", [(67, 45), (64, 64)])
def test_from_transformers_equals_hugging_face_in_both_key_layouts(tmp_path, size):
    hf = _hf_model()
    x = np.random.default_rng(0).standard_normal((2, 3, *size))
    stages, logits = _hf_reference(hf, x)
    hf = hf.float()
    # the hub's files: model.safetensors with transformers 4.x names + config.json, read
    # without torch
    hf.save_pretrained(tmp_path)
    keys = json.loads((tmp_path / "model.safetensors").read_bytes()[8:][
        :int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")])
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in keys
    model, variables = from_transformers(tmp_path, tmp_path / "config.json")
    assert model.backbone.norm_eps == 1e-5 and model.head.channels == 16
    _check_parity(model, variables, x, stages, logits)
    # transformers 5.x names, as the loaded model's state dict
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert "segformer.stages.0.blocks.0.attention.q_proj.weight" in state
    model5, variables5 = from_transformers(state, hf.config.to_dict())
    jax.tree.map(np.testing.assert_array_equal, variables5, variables)


def test_a_hub_sized_config_maps_to_its_registered_model():
    """The hub's nvidia/segformer-b2 sizes name segformer_mit_b2 (768-wide decoder); the model
    is the registered one with Hugging Face's LayerNorm epsilon."""
    from attnzoo.data.datasets import spec

    ade = spec("ade20k").classes
    config = dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768,
                  id2label={str(i): n + (" " if n == "bed" else "") for i, n in enumerate(ade)})
    c = from_fields(transformers_config_fields(config))
    assert c.model.name == "segformer_mit_b2" and c.dataset.num_classes == 150
    assert c.dataset.name == "ade20k" and tuple(c.dataset.eval_scale) == (2048, 512)
    assert c.dataset.class_names == ade  # the hub's id2label ("bed " as the hub spells it)
    assert (c.num_steps, c.batch_size) == (160_000, 16)  # SegFormer's ADE20K recipe
    model = engine.build_model(c)
    assert isinstance(model.backbone, backbones.MixVisionTransformer)
    assert model.backbone.depths == (3, 4, 6, 3) and model.head.channels == 768
    registered = models.create("segformer_mit_b2", num_classes=150)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    assert (jax.tree.map(lambda a: a.shape, jax.eval_shape(model.init, jax.random.key(0), x))
            == jax.tree.map(lambda a: a.shape,
                            jax.eval_shape(registered.init, jax.random.key(0), x)))
    city = from_fields(transformers_config_fields(
        {**config, "id2label": dict(enumerate(spec("cityscapes").classes))}))
    assert city.eval.mode == "slide" and tuple(city.eval.crop_size) == (1024, 1024)
    assert (city.num_steps, city.batch_size) == (160_000, 8)
    # 150 classes that are not ADE20K's, or no names: the model's own, never a built-in dataset
    mine = from_fields(transformers_config_fields(
        {**config, "id2label": {str(i): f"c{i}" for i in range(150)}}))
    assert mine.dataset.name == "folder" and mine.dataset.class_names[149] == "c149"
    unnamed = from_fields(transformers_config_fields(
        {**config, "id2label": {str(i): f"LABEL_{i}" for i in range(5)}}))
    assert unnamed.dataset.name == "folder" and unnamed.dataset.class_names[4] == "class_4"
    assert from_fields(transformers_config_fields(
        {**config, "id2label": {str(i): f"LABEL_{i}" for i in range(150)}})).dataset.name == "ade20k"
    with pytest.raises(ValueError, match="protocol 'ade20k-640x640' has 150 classes"):
        transformers_config_fields({**config, "id2label": {"0": "a"}}, "ade20k-640x640")


def test_from_transformers_refuses_what_it_cannot_rebuild(tmp_path):
    hf = _hf_model()
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    cfg = hf.config.to_dict()
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        from_transformers(state, {**cfg, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="mlp_ratios"):
        from_transformers(state, {**cfg, "mlp_ratios": [4, 4, 8, 4]})
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        from_transformers(state, {**cfg, "model_type": "bert"})
    with pytest.raises(ConversionError, match="decode_head.classifier.weight"):
        from_transformers(state, {**cfg, "num_labels": 7, "id2label": None})
    missing = {k: v for k, v in state.items() if "linear_fuse" not in k}
    with pytest.raises(ConversionError, match="head/fuse/conv/kernel"):
        from_transformers(missing, cfg)
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        from_transformers(tmp_path, cfg)


@pytest.mark.slow
def test_convert_command_writes_a_run_that_restores_and_predicts(tmp_path, capsys):
    from attnzoo import predict, viz
    from attnzoo.convert.__main__ import main

    hf = _hf_model(seed=3, id2label={i: f"c{i}" for i in range(5)})
    hf.save_pretrained(tmp_path / "hub")
    model, variables = from_transformers(tmp_path / "hub", tmp_path / "hub" / "config.json")
    assert main(["--source", "transformers:segformer", "--checkpoint", str(tmp_path / "hub"),
                 "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "transformers:segformer" in printed and "dataset folder" in printed
    assert "--manual-dir YOUR_FOLDER (images/ and masks/ of its 5 classes: c0, c1" in printed
    restored_model, restored, config = engine.restore(str(tmp_path / "run"))
    assert config.model.name == "segformer_mit_b0" and config.dataset.num_classes == 5
    assert config.dataset.name == "folder"  # 5 classes of no built-in dataset: never one
    assert config.dataset.class_names == tuple(f"c{i}" for i in range(5))
    x = np.random.default_rng(0).standard_normal((1, 40, 56, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(restored_model.apply(restored, x)["out"]),
                                  np.asarray(model.apply(variables, x)["out"]))
    image = viz.save_png(tmp_path / "street.png", np.full((48, 64, 3), 120, np.uint8))
    assert len(predict.predict_files(str(tmp_path / "run"), [image], str(tmp_path / "p"))) == 2
    from attnzoo import Segmenter  # the hub folder directly: the converted run's labels

    rgb = np.random.default_rng(1).integers(0, 256, (45, 70, 3), np.uint8)
    direct = Segmenter.from_transformers(tmp_path / "hub")
    assert direct.classes == tuple(f"c{i}" for i in range(5))
    np.testing.assert_array_equal(direct(rgb).labels,
                                  Segmenter.from_run(tmp_path / "run")(rgb).labels)


def _train_step(model, config, devices):
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_steps)
    mesh = sharding.make_mesh(devices)
    return engine.init_state(model, tx, config, mesh), engine.make_train_step(
        model, tx, schedule, config, mesh)


def _config(**overrides):
    c = engine.default_config()
    c.model.name = "segformer_mit_b0"
    c.dataset.num_classes = 5
    c.dataset.crop_size = (64, 64)
    c.optimizer.update(dict(name="adamw", learning_rate=1e-3, schedule="constant",
                            lr_mult={"head": 10.0}))
    c.update_from_flattened_dict(overrides)
    return c


def _batch(seed=0, n=8, size=64):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=(n, size, size)).astype(np.int32)
    labels[:, :4] = 255
    return {"image": rng.normal(size=(n, size, size, 3)).astype(np.float32), "label": labels}


@pytest.mark.slow
def test_bfloat16_training_step_has_finite_gradients():
    config = _config(compute_dtype="bfloat16")
    model = engine.build_model(config)
    state, step = _train_step(model, config, jax.devices()[:1])
    state, metrics = step(state, _batch())
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["grad_norm"]) > 0
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}


@pytest.mark.parametrize("backbone", [pytest.param("mit_b0", marks=pytest.mark.slow),
                                      pytest.param("mit_b2", marks=pytest.mark.exhaustive)])
def test_any_head_sits_on_mit_danet_trains_end_to_end(backbone):  # 50 s, 70 s here
    """DANet on MiT (stage 4 at stride 32, auxiliary FCN on stage 3): the engine's train step
    runs, the loss has the DANet branches, the gradient reaches the encoder."""
    spec = EncoderDecoderSpec(backbone=backbone, head="danet", output_stride=None,
                              head_kwargs={"channels": 32},
                              aux_kwargs={"channels": 16, "num_convs": 1, "concat_input": False})
    model = spec.build(num_classes=5)
    config = _config(**{"optimizer.lr_mult": {}})
    state, step = _train_step(model, config, jax.devices()[:1])
    before = jax.device_get(state.params["backbone"]["patch_embed_0"]["proj"]["kernel"])
    state, metrics = step(state, _batch(n=2))
    assert {"out/cross_entropy", "pam/cross_entropy", "cam/cross_entropy",
            "aux/cross_entropy"} <= set(metrics)
    assert np.isfinite(float(metrics["loss"]))
    after = jax.device_get(state.params["backbone"]["patch_embed_0"]["proj"]["kernel"])
    assert not np.allclose(after, before)
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                      _batch(n=1, size=96)["image"])["out"]
    assert out.shape == (1, 96, 96, 5)


def test_head_learning_rate_multiplier_scales_only_the_head():
    """lr_mult {"head": 10}: one SGD step moves the head 10x as far as without it and leaves
    the backbone's step unchanged (PyTorch's parameter-group lr)."""
    grads = {"backbone": {"w": jnp.ones(3)}, "head": {"w": jnp.full(3, 2.0)}}
    params = jax.tree.map(jnp.zeros_like, grads)
    base = dict(engine.default_config().optimizer, name="sgd", momentum=0.0, weight_decay=0.0,
                schedule="constant", learning_rate=0.1)
    plain, _ = optim.make_optimizer(base, 10)
    scaled, _ = optim.make_optimizer({**base, "lr_mult": {"head": 10.0}}, 10)
    u0, _ = plain.update(grads, plain.init(params), params)
    u1, _ = scaled.update(grads, scaled.init(params), params)
    np.testing.assert_allclose(u1["head"]["w"], 10 * u0["head"]["w"])
    np.testing.assert_array_equal(u1["backbone"]["w"], u0["backbone"]["w"])
    wrong, _ = optim.make_optimizer({**base, "lr_mult": {"decode_head": 10.0}}, 10)
    with pytest.raises(ValueError, match=r"names \['decode_head'\], not modules"):
        wrong.update(grads, wrong.init(params), params)


@pytest.mark.slow  # 8 s; tests/test_conv.py checks every convolution form in the default set
@pytest.mark.parametrize("kind", ["depthwise", "patch"])
def test_cpu_convolution_forms_equal_lax_conv_in_value_and_gradient(kind):
    """DepthwiseConv (shifted products on CPU) and PatchConv (patches x kernel) against
    ``nn.Conv`` with the same parameters: outputs and both gradients to 1e-5 relative
    (float32 sums in another order)."""
    import flax.linen as nn

    from attnzoo.blocks.common import DepthwiseConv, PatchConv

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 13, 10, 6)), jnp.float32)
    if kind == "depthwise":
        ours = DepthwiseConv(3)
        ref = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=6)
    else:
        ours = PatchConv(5, 4)
        ref = nn.Conv(5, (4, 4), strides=(4, 4), padding="VALID")
    params = jax.tree.map(lambda a: a + 0.1, ref.init(jax.random.key(1), x))
    loss = lambda m: lambda p, x: (m.apply(p, x) ** 2).sum()  # noqa: E731
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), g_ours,
                 g_ref)
