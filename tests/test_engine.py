"""The training engine: optimisers, sharded steps on 1 and 8 devices, the training loop with
its checkpoints, resume, NaN stop and determinism, restore, the evaluate / predict commands,
and the shipped configs."""

import importlib.util
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attnzoo import backbones, engine
from attnzoo.engine import optim
from attnzoo.engine import state as state_lib

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(data_dir, **overrides):
    """A narrow DANet on 64x64 crops of context_shapes: seconds per run on CPU."""
    c = engine.default_config()
    c.model.name = "danet_r18_d8"
    c.model.backbone_kwargs = {"width": 8, "stem_width": 8}
    c.model.head_channels = 16
    c.model.aux_channels = 8
    c.dataset.data_dir = str(data_dir)
    c.dataset.crop_size = (64, 64)
    c.dataset.ratio_range = (1.0, 1.0)
    c.dataset.eval_split = "validation[:16]"
    c.dataset.shuffle_buffer = 64
    c.num_steps = 4
    c.batch_size = 8
    c.eval_batch_size = 8
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.min_lr = 1e-5
    c.eval.crop_size = (64, 64)
    c.eval.stride = (32, 32)
    c.log_every = 1
    c.eval_every = 1000
    c.checkpoint_every = 2
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for part in parents:
            target = target[part]
        target[leaf] = value
    return c


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_trees_equal(a, b, rtol=0.0, atol=0.0):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- optimisers and schedules


def test_poly_schedule_with_warmup_matches_the_formula():
    cfg = engine.default_config().optimizer
    cfg.learning_rate, cfg.min_lr, cfg.power, cfg.warmup_steps = 0.01, 1e-4, 0.9, 10
    schedule = optim.learning_rate_schedule(cfg, 110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 0.005, rtol=1e-6)
    for t in (10, 40, 109):
        expected = (0.01 - 1e-4) * (1 - (t - 10) / 100) ** 0.9 + 1e-4
        np.testing.assert_allclose(float(schedule(t)), expected, rtol=1e-5)


def test_cosine_schedule_ends_at_min_lr():
    cfg = engine.default_config().optimizer
    cfg.schedule, cfg.learning_rate, cfg.min_lr = "cosine", 0.1, 0.001
    schedule = optim.learning_rate_schedule(cfg, 100)
    np.testing.assert_allclose(float(schedule(50)), 0.001 + (0.1 - 0.001) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(100)), 0.001, rtol=1e-5)


def test_sgd_step_decays_kernels_only_and_matches_pytorch_sgd():
    cfg = engine.default_config().optimizer  # sgd, momentum 0.9, wd 5e-4, poly
    cfg.schedule = "constant"
    params = {"conv": {"kernel": jnp.full((3, 3, 2, 2), 0.5), "bias": jnp.full((2,), 0.5)},
              "bn": {"scale": jnp.full((2,), 2.0)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    tx, _ = optim.make_optimizer(cfg, 10)
    opt_state = tx.init(params)
    for _ in range(2):  # PyTorch: buf = m buf + (g + wd p); p -= lr buf
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    p, buf = 0.5, 0.0
    for _ in range(2):
        buf = 0.9 * buf + (0.1 + 5e-4 * p)
        p -= 0.01 * buf
    np.testing.assert_allclose(np.asarray(params["conv"]["kernel"]), p, rtol=1e-6)
    no_decay = 0.5 - 0.01 * (0.1 + (0.9 * 0.1 + 0.1))
    np.testing.assert_allclose(np.asarray(params["conv"]["bias"]), no_decay, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(params["bn"]["scale"]), 2.0 - 0.01 * 0.29, rtol=1e-6)


def test_gradient_accumulation_equals_the_mean_gradient():
    cfg = engine.default_config().optimizer
    cfg.name, cfg.schedule, cfg.weight_decay = "adamw", "constant", 0.0
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    g1 = {"w": jnp.linspace(-1, 1, 6).reshape(2, 3)}
    g2 = {"w": jnp.linspace(2, -0.5, 6).reshape(2, 3)}
    cfg.accumulate_steps = 2
    tx2, _ = optim.make_optimizer(cfg, 10)
    s = tx2.init(params)
    u, s = tx2.update(g1, s, params)
    assert not np.asarray(u["w"]).any()  # no update until the k-th call
    p2 = optax.apply_updates(params, u)
    u, s = tx2.update(g2, s, p2)
    p2 = optax.apply_updates(p2, u)
    cfg.accumulate_steps = 1
    tx1, _ = optim.make_optimizer(cfg, 5)
    u, _ = tx1.update(jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), tx1.init(params), params)
    np.testing.assert_allclose(np.asarray(p2["w"]), np.asarray(optax.apply_updates(params, u)["w"]),
                               rtol=1e-6)


def test_clip_norm_bounds_the_update():
    cfg = engine.default_config().optimizer
    cfg.schedule, cfg.momentum, cfg.weight_decay, cfg.clip_norm, cfg.learning_rate = \
        "constant", 0.0, 0.0, 1.0, 1.0
    tx, _ = optim.make_optimizer(cfg, 10)
    params = {"w": jnp.zeros((4, 4))}
    u, _ = tx.update({"w": jnp.full((4, 4), 3.0)}, tx.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(u)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("key,value,match", [
    ("optimizer.name", "lamb", "optimizer.name"),
    ("optimizer.schedule", "step", "optimizer.schedule"),
    ("optimizer.accumulate_steps", 0, "optimizer.accumulate_steps"),
])
def test_bad_optimizer_settings_name_the_field(key, value, match):
    cfg = tiny_config("/nonexistent", **{key: value})
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(cfg.optimizer, cfg.num_steps)


@pytest.mark.parametrize("key,value,match", [
    ("batch_size", 0, "batch_size"), ("num_steps", -3, "num_steps"),
    ("eval_every", 0, "eval_every"),
])
def test_bad_loop_settings_name_the_field(tmp_path, key, value, match):
    with pytest.raises(ValueError, match=match):
        engine.train_and_evaluate(tiny_config(tmp_path, **{key: value}), tmp_path / "run")


# ---------------------------------------------------------------- sharded steps


@pytest.mark.slow
def test_train_step_is_the_same_on_1_and_8_devices():
    assert len(jax.devices()) == 8
    config = tiny_config("/unused", **{"optimizer.name": "sgd", "model.name": "fcn_r18_d8"})
    model = state_lib.build_model(config)
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_steps)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 64, 64, 3)).astype(np.float32),
             "label": rng.integers(0, 5, size=(8, 64, 64)).astype(np.int32)}
    batch["label"][:, :4] = 255
    results = []
    initial = jax.device_get(state_lib.init_state(model, tx, config, state_lib.make_mesh()))
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = state_lib.make_mesh(devices)
        st = jax.device_put(initial, state_lib.replicated(mesh))
        step = state_lib.make_train_step(model, tx, schedule, config, mesh)
        for _ in range(2):
            st, metrics = step(st, batch)
        assert st.params["head"]["cls"]["conv_seg"]["kernel"].sharding.is_fully_replicated
        results.append(jax.device_get((st.params, st.batch_stats, metrics)))
    (p1, b1, m1), (p8, b8, m8) = results
    assert int(m1["loss"] > 0) and set(m1) >= {"loss", "grad_norm", "update_norm", "lr",
                                          "out/cross_entropy", "aux/cross_entropy"}
    # Tolerance: 1e-5 relative; the two gradient norms 5e-5. On 8 devices each parameter
    # gradient is a sum of 8 per-device partial sums (all-reduced), on 1 device one sum in
    # another order; the norm, a further sum of squares over 0.8M entries, carries that float32
    # rounding (measured 2.5e-5 with 1x1 convolutions as dot_general).
    for k in m1:
        rtol = 5e-5 if k in ("grad_norm", "update_norm") else 1e-5
        np.testing.assert_allclose(m8[k], m1[k], rtol=rtol, err_msg=k)
    assert_trees_equal(p8, p1, rtol=1e-5, atol=1e-7)
    assert_trees_equal(b8, b1, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
    config = tiny_config("/unused", compute_dtype="bfloat16", **{"model.name": "fcn_r18_d8"})
    model = state_lib.build_model(config)
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_steps)
    mesh = state_lib.make_mesh()
    st = state_lib.init_state(model, tx, config, mesh)
    rng = np.random.default_rng(1)
    batch = {"image": rng.normal(size=(8, 64, 64, 3)).astype(np.float32),
             "label": rng.integers(0, 5, size=(8, 64, 64)).astype(np.int32)}
    st, metrics = state_lib.make_train_step(model, tx, schedule, config, mesh)(st, batch)
    assert {leaf.dtype for leaf in jax.tree.leaves(st.params)} == {jnp.dtype("float32")}
    assert math.isfinite(float(metrics["loss"]))


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_keep_latest_and_best_by_miou(tmp_path):
    ckpts = engine.Checkpoints(tmp_path, keep=2, keep_best=1, async_save=True)
    state = {"w": np.arange(4.0)}
    for step, miou in zip(range(1, 7), (0.1, 0.6, 0.2, 0.3, 0.1, 0.05)):
        ckpts.save(step, jax.tree.map(lambda a: a * step, state), {"seed": 0},
                   metrics={"mIoU": miou})
    ckpts.wait()
    assert ckpts.steps() == [2, 5, 6]
    restored, step = ckpts.restore_state({"w": jax.ShapeDtypeStruct((4,), np.float64)}, 2)
    np.testing.assert_array_equal(restored["w"], np.arange(4.0) * 2)
    ckpts.close()


# ---------------------------------------------------------------- the training loop


@pytest.fixture(scope="module")
def run(context_shapes_dir, tmp_path_factory):
    """One finished 4-step run of the tiny config on 8 devices (checkpoints at steps 2, 4)."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config(context_shapes_dir)
    result = engine.train_and_evaluate(config, workdir)
    return workdir, config, result


def final_params(workdir):
    _, variables, _ = engine.restore(workdir)
    return variables


def test_run_writes_checkpoints_logs_and_predictions(run):
    workdir, config, result = run
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) \
        == [2, 4]
    lines = jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in lines if r["split"] == "train"] == [1, 2, 3, 4]
    (ev,) = [r for r in lines if r["split"] == "eval"]
    assert ev["step"] == 4 and ev["mIoU"] == pytest.approx(result["mIoU"])
    assert all(math.isfinite(r["loss"]) for r in lines if r["split"] == "train")
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    from PIL import Image
    picture = np.asarray(Image.open(workdir / "predictions.png"))
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[1] >= 3 * 64
    assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "danet_r18_d8"
    assert result["classes"] == ["background", "alpha", "beta", "gamma", "marker"]
    assert 0.0 <= result["mIoU"] <= 1.0 and len(result["IoU"]) == 5


def test_restore_gives_the_trained_model(run, context_shapes_dir):
    workdir, config, _ = run
    model, variables, restored_config = engine.restore(workdir)
    assert restored_config.model.name == config.model.name
    for path in (workdir / "checkpoints", workdir / "checkpoints" / "4"):
        _, v, _ = engine.restore(path)
        assert_trees_equal(v, variables)
    _, v2, _ = engine.restore(workdir, step=2)
    assert not np.allclose(v2["params"]["head"]["cls"]["conv_seg"]["kernel"],
                           variables["params"]["head"]["cls"]["conv_seg"]["kernel"])
    out = model.apply(variables, jnp.ones((1, 64, 96, 3)))
    assert out["out"].shape == (1, 64, 96, 5)
    with pytest.raises(FileNotFoundError, match="no attnzoo checkpoints"):
        engine.restore(context_shapes_dir)


def test_resume_reaches_the_same_parameters(run, tmp_path):
    """Losing the newest checkpoint (a crash after step 2's save) and running the same command
    again resumes at step 2 and ends with exactly the uninterrupted run's parameters."""
    workdir, config, result = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    (copy / "metrics.jsonl").unlink()
    resumed = engine.train_and_evaluate(config, copy)
    assert [r["step"] for r in jsonl(copy / "metrics.jsonl") if r["split"] == "train"] == [3, 4]
    assert_trees_equal(final_params(copy), final_params(workdir))
    assert resumed["mIoU"] == result["mIoU"]
    original = {r["step"]: r["loss"] for r in jsonl(workdir / "metrics.jsonl") if "loss" in r}
    for r in jsonl(copy / "metrics.jsonl"):
        if "loss" in r:
            assert r["loss"] == original[r["step"]]


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics(run, tmp_path):
    workdir, config, _ = run
    config = tiny_config(config.dataset.data_dir, num_steps=2)
    engine.train_and_evaluate(config, tmp_path / "again")
    again = [r for r in jsonl(tmp_path / "again" / "metrics.jsonl") if r["split"] == "train"]
    first = [r for r in jsonl(workdir / "metrics.jsonl") if r["split"] == "train"][:2]
    assert [r["loss"] for r in again] != [] and len(again) == 2
    # num_steps changes only the schedule's horizon, which the first steps' losses do not see
    assert [r["loss"] for r in again] == [r["loss"] for r in first]
    config.seed = 1
    engine.train_and_evaluate(config, tmp_path / "other_seed")
    other = [r for r in jsonl(tmp_path / "other_seed" / "metrics.jsonl") if r["split"] == "train"]
    assert other[0]["loss"] != first[0]["loss"]


@pytest.mark.slow
def test_nan_stops_training_naming_the_step_and_keeps_good_checkpoints(run, tmp_path):
    workdir, config, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    bad = tiny_config(config.dataset.data_dir, num_steps=8, **{"optimizer.learning_rate": math.nan})
    with pytest.raises(engine.NonFiniteLossError, match="at step 5"):
        engine.train_and_evaluate(bad, copy)
    assert engine.Checkpoints(copy / "checkpoints", read_only=True).steps() == [2, 4]
    assert_trees_equal(final_params(copy), final_params(workdir))


def test_corrupt_checkpoint_is_skipped_with_a_warning(run, tmp_path, caplog):
    workdir, config, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    for f in (copy / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="attnzoo"):
        _, variables, _ = engine.restore(copy)
    assert "checkpoint step 4" in caplog.text and "unreadable" in caplog.text
    _, step2, _ = engine.restore(workdir, step=2)
    assert_trees_equal(variables, step2)


def test_evaluate_command_reproduces_the_training_evaluation(run, capsys):
    from attnzoo import evaluate

    workdir, config, result = run
    out = evaluate.main(["--workdir", str(workdir)])
    printed = capsys.readouterr().out
    assert out["mIoU"] == pytest.approx(result["mIoU"], abs=1e-6)
    assert "mIoU" in printed and "marker" in printed and "step 4" in printed
    saved = json.loads((workdir / "eval_validation[:16]_step4.json").read_text())
    assert saved["mIoU"] == pytest.approx(result["mIoU"], abs=1e-6)


@pytest.mark.slow
def test_evaluate_command_slide_and_tta_modes(run):
    from attnzoo import evaluate

    workdir, _, result = run
    slide = evaluate.main(["--workdir", str(workdir), "--mode", "slide", "--step", "2"])
    tta = evaluate.main(["--workdir", str(workdir), "--tta", "--memory-efficient"])
    assert slide["step"] == 2 and tta["step"] == 4
    assert 0 <= slide["mIoU"] <= 1 and 0 <= tta["mIoU"] <= 1
    assert tta["mIoU"] != result["mIoU"]  # six scales and flips do change the predictions


def test_predict_command_writes_masks_overlays_and_attention(run, tmp_path, capsys):
    from PIL import Image

    from attnzoo import predict, viz
    from attnzoo.data import context_shapes as cs

    workdir, _, _ = run
    paths = []
    for i in range(2):
        image, _, _ = cs.render(7, 1, i)
        paths.append(viz.save_png(tmp_path / f"img{i}.png", image.astype(np.uint8)))
    written = predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "out"),
                            "--attention", "--point", "10,10", "--point", "100,60", "--channels", "0,3",
                            *map(str, paths)])
    names = sorted(p.name for p in written)
    assert names == sorted(f"img{i}_{k}.png" for i in range(2)
                           for k in ("mask", "overlay", "pam", "cam"))
    mask = np.asarray(Image.open(tmp_path / "out" / "img0_mask.png"))
    palette = viz.palette(5)
    assert mask.shape == (128, 128, 3)
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= {tuple(c) for c in palette}
    assert np.asarray(Image.open(tmp_path / "out" / "img0_pam.png")).shape[1] >= 3 * 128
    with pytest.raises(ValueError, match="--point"):
        predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "o2"), "--attention",
                      "--point", "500,5", str(paths[0])])


def test_attention_maps_are_the_ones_the_position_attention_applies(run):
    """With PAM's gamma g, out = g * (values weighted by the map) + x: the difference of the
    PAM outputs at gamma 1 and gamma 0 must equal the maps predict draws, applied to the
    values."""
    from attnzoo.predict import _find, attention_maps

    workdir, _, _ = run
    model, variables, _ = engine.restore(workdir)
    image = jnp.asarray(np.random.default_rng(3).normal(size=(1, 64, 64, 3)), jnp.float32)
    h = w = 8  # output stride 8
    points = [(y * 8, x * 8) for y in range(h) for x in range(w)]
    pam, _ = attention_maps(model, variables, image, points, [0])
    assert pam.shape == (h * w, h, w)
    np.testing.assert_allclose(pam.sum(axis=(1, 2)), 1.0, rtol=1e-5)

    def pam_output(gamma):
        params = jax.tree_util.tree_map(lambda a: a, variables["params"])
        _find(params, "pam")["gamma"] = jnp.full_like(_find(params, "pam")["gamma"], gamma)
        _, st = model.apply({**variables, "params": params}, image, mutable=["intermediates"],
                            capture_intermediates=lambda m, _: m.name in ("pam", "value_conv"))
        inter = st["intermediates"]
        return _find(inter, "pam")["__call__"][0], _find(inter, "value_conv")["__call__"][0]

    out1, values = pam_output(1.0)
    out0, _ = pam_output(0.0)
    weighted = pam.reshape(h * w, h * w) @ np.asarray(values).reshape(h * w, -1)
    np.testing.assert_allclose(np.asarray(out1 - out0).reshape(h * w, -1), weighted,
                               rtol=1e-4, atol=1e-5)


def test_restore_and_predict_need_no_tensorflow(run, tmp_path):
    workdir, _, _ = run
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None\n"
        "import numpy as np\n"
        "from attnzoo.engine import restore\n"
        "from attnzoo import predict, viz\n"
        f"model, variables, config = restore({str(workdir)!r})\n"
        "print(model.apply(variables, np.zeros((1, 64, 64, 3), np.float32))['out'].shape)\n"
        f"p = viz.save_png({str(tmp_path / 'x.png')!r}, np.full((64, 64, 3), 90, np.uint8))\n"
        f"print(len(predict.predict_files({str(workdir)!r}, [p], {str(tmp_path / 'o')!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["(1,", "64,", "64,", "5)", "2"]


@pytest.mark.slow
def test_init_from_loads_a_converted_backbone(context_shapes_dir, tmp_path):
    from attnzoo.convert.backbones import save_backbone
    from attnzoo.engine.train import load_pretrained_backbone

    config = tiny_config(context_shapes_dir)
    bb = backbones.create("resnet18_v1c", output_stride=8, width=8, stem_width=8)
    variables = bb.init(jax.random.key(5), jnp.zeros((1, 64, 64, 3)), train=False)
    variables = jax.tree.map(lambda a: a + 0.25, variables)  # unlike any fresh init
    path = save_backbone(tmp_path / "bb", bb, variables, source="test")
    model = state_lib.build_model(config)
    tx, _ = optim.make_optimizer(config.optimizer, config.num_steps)
    mesh = state_lib.make_mesh()
    st = load_pretrained_backbone(state_lib.init_state(model, tx, config, mesh), str(path))
    assert_trees_equal(st.params["backbone"], variables["params"])
    assert_trees_equal(st.batch_stats["backbone"], variables["batch_stats"])
    wide = backbones.create("resnet18_v1c", output_stride=8, width=16, stem_width=8)
    save_backbone(tmp_path / "wide", wide, wide.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    with pytest.raises(ValueError, match="init_from.*model .* vs checkpoint"):
        load_pretrained_backbone(st, str(tmp_path / "wide"))


# ---------------------------------------------------------------- configs


def load_config(spec):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("spec,name,crop,steps", [
    ("fcn.py", "fcn_r50_d8", (512, 1024), 80_000),
    ("danet.py:r101,cityscapes769", "danet_r101_d8", (769, 769), 80_000),
    ("ccnet.py:r50,ade20k", "ccnet_r50_d8", (512, 512), 160_000),
    ("nonlocal.py", "nonlocal_r50_d8", (512, 1024), 80_000),
    ("psa.py", "psa_r50_d8", (512, 1024), 80_000),
    ("deeplabv3.py:r101", "deeplabv3_r101_d8", (512, 1024), 80_000),
    ("attention_unet.py", "attention_unet", (512, 1024), 80_000),
    ("quickstart.py", "danet_r18_d8", (128, 128), 1000),
    ("quickstart.py:ccnet", "ccnet_r18_d8", (128, 128), 1000),
])
def test_shipped_configs_build_their_model(spec, name, crop, steps):
    config = load_config(spec)
    assert config.model.name == name
    assert tuple(config.dataset.crop_size) == crop and config.num_steps == steps
    if spec != "quickstart.py" and not spec.startswith("quickstart"):
        assert config.optimizer.name == "sgd" and config.optimizer.learning_rate == 0.01
        assert config.optimizer.momentum == 0.9 and config.optimizer.weight_decay == 5e-4
        assert config.optimizer.schedule == "poly" and config.optimizer.power == 0.9
    model = state_lib.build_model(config)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
    assert jax.tree.leaves(shapes)


# ---------------------------------------------------------------- processes (slow)


def tiny_cli_flags(data_dir, workdir, num_steps, checkpoint_every):
    return [
        sys.executable, str(ROOT / "train.py"), f"--config={ROOT / 'configs' / 'quickstart.py'}:fcn",
        f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
        "--config.model.backbone_kwargs={'width': 8, 'stem_width': 8}",
        "--config.model.head_channels=16", "--config.model.aux_channels=8",
        "--config.dataset.crop_size=(64, 64)", "--config.dataset.eval_split=validation[:16]",
        f"--config.num_steps={num_steps}", f"--config.checkpoint_every={checkpoint_every}",
        "--config.log_every=1", f"--config.eval_every={num_steps}", "--config.eval_batch_size=8",
    ]


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_to_the_same_parameters(context_shapes_dir, tmp_path):
    import os
    import signal
    import time

    steps = 60
    straight = subprocess.run(tiny_cli_flags(context_shapes_dir, tmp_path / "a", steps, 5),
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "final mIoU" in straight.stdout

    cmd = tiny_cli_flags(context_shapes_dir, tmp_path / "b", steps, 5)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    log, deadline = tmp_path / "b" / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and any(r["step"] >= 13 for r in jsonl(log)):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = max(r["step"] for r in jsonl(log))
    assert killed_at < steps

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = int(again.stdout.split("resuming from the checkpoint of step ")[1].split()[0])
    assert 5 <= resumed <= killed_at and resumed % 5 == 0
    assert_trees_equal(final_params(tmp_path / "b"), final_params(tmp_path / "a"))
    final = [line for line in again.stdout.splitlines() if line.startswith("final mIoU")]
    assert final == [line for line in straight.stdout.splitlines() if line.startswith("final mIoU")]


DISTRIBUTED_WORKER = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
sys.path.insert(0, sys.argv[5])
from test_engine import tiny_config
from attnzoo import engine
assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
config = tiny_config(sys.argv[3], **{"model.name": "fcn_r18_d8"})
result = engine.train_and_evaluate(config, sys.argv[4])
_, variables, _ = engine.restore(sys.argv[4])
leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(variables)]
print("DIGEST", sum(float(np.abs(leaf).sum()) for leaf in leaves), result["mIoU"], flush=True)
np.savez(f"{sys.argv[4]}/params_{sys.argv[2]}.npz", *leaves)
"""


@pytest.mark.slow
def test_two_processes_train_identical_parameters_and_a_restorable_checkpoint(
        context_shapes_dir, tmp_path):
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(DISTRIBUTED_WORKER)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    workdir = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(context_shapes_dir),
                               str(workdir), str(ROOT / "tests")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=ROOT) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):  # (gloo's shutdown prints asyncio noise)
        assert p.returncode == 0, "\n".join(
            line for line in err.splitlines() if "Event loop" not in line)[-3000:]
    digests = [[line for line in out.splitlines() if line.startswith("DIGEST")] for out, _ in outs]
    assert digests[0] == digests[1] and len(digests[0]) == 1
    p0, p1 = (np.load(workdir / f"params_{i}.npz") for i in range(2))
    for k in p0.files:
        np.testing.assert_array_equal(p0[k], p1[k])
    # the checkpoint both processes wrote restores in this (single) process to the same values
    restored = [np.asarray(leaf) for leaf in jax.tree.leaves(final_params(workdir))]
    assert len(restored) == len(p0.files)
    for i, leaf in enumerate(restored):
        np.testing.assert_array_equal(leaf, p0[f"arr_{i}"])
    assert engine.Checkpoints(workdir / "checkpoints", read_only=True).steps() == [2, 4]


@pytest.mark.slow
def test_compose_attention_notebook_runs(run, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    workdir, _, _ = run
    monkeypatch.setenv("ATTNZOO_RUN", str(workdir))
    notebook = nbformat.read(ROOT / "examples" / "compose_attention.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "examples")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "max |block - reference|" in text and "restored from" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
