"""Fully sharded data parallelism (``config.mesh``, :mod:`attnzoo.sharding`): the layout rules,
train steps on 8 simulated devices as 8x1, 2x4 and 1x8 equal to one device, checkpoints restored
onto another mesh, evaluation on sharded parameters."""

import shutil

import jax
import numpy as np
import pytest
from helpers import assert_same_training, jsonl, tiny_config
from jax.sharding import PartitionSpec as P

from attnzoo import engine, sharding
from attnzoo.engine import checkpoint, optim
from test_steps import family_config

MESHES = ((8, 1), (2, 4), (1, 8))  # (data, fsdp) on the 8 simulated devices


def mesh(data, fsdp):
    return sharding.make_mesh(jax.devices()[:data * fsdp], data=data, fsdp=fsdp)


def test_the_default_layout_splits_the_largest_dimension_the_fsdp_size_divides():
    grid = mesh(2, 4)
    spec = lambda shape, **kw: sharding.array_spec("params/x/kernel", shape, grid, **kw)
    assert spec((3, 3, 64, 128), min_size=0) == P(None, None, None, "fsdp")
    assert spec((3, 3, 256, 128), min_size=0) == P(None, None, "fsdp")
    assert spec((64, 64), min_size=0) == P(None, "fsdp")  # equal ones: the last (outputs)
    assert spec((4, 6), min_size=0) == P("fsdp")  # 6 does not divide by 4
    assert spec((3, 5, 7), min_size=0) == P()  # nothing divides
    assert spec((), min_size=0) == P()
    assert spec((256, 255)) == P()  # under the default threshold (2 ** 16 elements)
    assert spec((256, 256)) == P(None, "fsdp")
    # one device per group, or a mesh without the axis: replicated
    assert sharding.array_spec("k", (64, 64), mesh(8, 1), min_size=0) == P()
    data_only = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    assert sharding.array_spec("k", (64, 64), data_only, min_size=0) == P()


def test_rules_override_the_layout_and_a_rule_that_does_not_fit_is_named():
    grid = mesh(2, 4)
    rules = (("pos_embed", ()), (r"head/.*kernel$", ("fsdp",)), ("kernel", (None, "data")))
    spec = lambda path, shape: sharding.array_spec(path, shape, grid, rules, min_size=0)
    assert spec("params/backbone/pos_embed", (1, 256, 64)) == P()
    assert spec("opt_state/0/mu/head/conv/kernel", (64, 32)) == P("fsdp")  # moments too
    assert spec("params/backbone/kernel", (64, 32)) == P(None, "data")
    assert spec("params/backbone/bias", (64,)) == P("fsdp")  # no rule: the default
    with pytest.raises(ValueError, match=r"mesh.rules: 'head/.\*kernel\$'.*head/k/kernel"):
        spec("params/head/k/kernel", (6, 32))  # 4 does not divide 6
    with pytest.raises(ValueError, match="mesh.rules: 'x'"):
        sharding.array_spec("params/x", (8, 8), grid, (("x", ("model",)),))
    with pytest.raises(ValueError, match="mesh.rules: 'x'"):
        sharding.array_spec("params/x", (8,), grid, (("x", (None, "fsdp")),))


def test_mesh_sizes_are_checked_and_named():
    assert dict(mesh(2, 4).shape) == {"data": 2, "fsdp": 4}
    assert dict(sharding.make_mesh(fsdp=2).shape) == {"data": 4, "fsdp": 2}
    with pytest.raises(ValueError, match=r"mesh.fsdp=3 must be a positive integer dividing the 8"):
        sharding.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match=r"mesh.data x mesh.fsdp = 2 x 2 must equal the 8"):
        sharding.make_mesh(data=2, fsdp=2)
    for field, value in (("mesh.fsdp", 0), ("mesh.min_shard_size", -1),
                         ("mesh.rules", (("x", "fsdp"),))):
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            engine.config.check_domains(tiny_config("/unused", **{field: value}))


def test_a_run_refuses_a_mesh_that_does_not_fit_before_writing(tmp_path):
    with pytest.raises(ValueError, match="mesh.fsdp=3"):
        engine.train_and_evaluate(tiny_config(tmp_path, **{"mesh.fsdp": 3}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def train(config, shape, steps=2):
    """``steps`` SGD steps of ``config``'s model on a mesh of ``shape`` (None: one device) from
    the same initial state, as ``(params, batch_stats, metrics)`` on the host and the state."""
    model = engine.build_model(config)
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_steps)
    grid = sharding.make_mesh(jax.devices()[:1]) if shape is None else mesh(*shape)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 64, 64, 3)).astype(np.float32),
             "label": rng.integers(0, 5, size=(8, 64, 64)).astype(np.int32)}
    batch["label"][:, :4] = 255
    state = engine.init_state(model, tx, config, grid)
    step = engine.make_train_step(model, tx, schedule, config, grid)
    for _ in range(steps):
        state, metrics = step(state, batch)
    return jax.device_get((state.params, state.batch_stats, metrics)), state


def split_arrays(tree):
    return [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(tree)
            if not x.sharding.is_fully_replicated]


def check_layout(state, fsdp):
    """Parameters and their optimizer moments (SGD's one, Adam's two) split along ``fsdp`` where
    the rules say so (all of them with a dimension it divides, min_shard_size 0)."""
    split = split_arrays(state.params)
    if fsdp == 1:
        assert split == [] and split_arrays(state.opt_state) == []
        return
    assert len(split) > len(jax.tree.leaves(state.params)) // 2
    assert len(split_arrays(state.opt_state)) in (len(split), 2 * len(split))
    for x in jax.tree.leaves(state.params):
        spec = x.sharding.spec
        assert all(a in (None, "fsdp") for a in spec)
        if "fsdp" in spec:
            assert x.shape[spec.index("fsdp")] % fsdp == 0
            assert x.addressable_shards[0].data.size == x.size // fsdp


@pytest.mark.slow  # 44 s here
def test_an_fsdp_train_step_equals_one_device():
    """Two SGD steps of the tiny DANet (BatchNorm, attention, an auxiliary head) with every
    parameter split 4 ways: the parameters, statistics and metrics of one device (1e-5)."""
    config = tiny_config("/unused", **{"optimizer.name": "sgd", "mesh.min_shard_size": 0})
    want, _ = train(config, None)
    got, state = train(config, (2, 4))
    check_layout(state, 4)
    assert_same_training(want, got)


@pytest.mark.parametrize("family,model,fields", [
    pytest.param("danet", None, {}, marks=pytest.mark.slow),
    pytest.param("upernet", "upernet_swin_t", {"model.remat.transformer": "dots"},
                 marks=pytest.mark.exhaustive),  # 116 s here
    pytest.param("setr", "setr_vit_l_mla", {},  # 84 s here; the scanned ViT below is slow
                 marks=pytest.mark.exhaustive),
    pytest.param("setr", "setr_vit_l_mla", {"model.scan_layers": True,
                                            "model.remat.transformer": "nothing"},
                 marks=pytest.mark.slow),
])
def test_train_steps_on_8x1_2x4_1x8_equal_one_device(family, model, fields):
    """The quickstart DANet, a Swin UPerNet (with remat) and a ViT SETR-MLA (unrolled; scanned
    with remat: the stacked layers split too) train alike on one device and on each mesh."""
    config = family_config(family, model)
    config.update_from_flattened_dict({"mesh.min_shard_size": 0, **fields})
    want, _ = train(config, None)
    for shape in MESHES:
        got, state = train(config, shape)
        check_layout(state, shape[1])
        assert_same_training(want, got)


def test_a_sharded_checkpoint_restores_onto_another_mesh(tmp_path):
    """A state saved from a 2x4 mesh (each array in 4 parts) restores onto 8x1, 1x8 and one
    device: the same values, laid out as the target mesh says."""
    config = tiny_config("/unused", **{"mesh.min_shard_size": 0})
    model = engine.build_model(config)
    tx, _ = optim.make_optimizer(config.optimizer, config.num_steps)
    state = engine.init_state(model, tx, config, mesh(2, 4))
    saved = jax.device_get(state)
    ckpts = checkpoint.Checkpoints(tmp_path / "checkpoints", async_save=False)
    try:
        ckpts.save(0, state, config)
        ckpts.wait()
        for shape in ((8, 1), (1, 8), (1, 1)):
            target = engine.state.abstract_state(model, tx, config, mesh(*shape))
            restored, step = ckpts.restore_state(target, 0)
            assert step == 0
            for x, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
                assert x.sharding == t.sharding
            check_layout(restored, shape[1])
            for x, y in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(saved)):
                np.testing.assert_array_equal(x, y)
    finally:
        ckpts.close()


@pytest.mark.slow
def test_a_run_resumes_on_an_fsdp_mesh_and_evaluates_sharded(run, tmp_path):
    """The tiny run's step-2 checkpoint (replicated, 8x1) resumed with ``mesh.fsdp=4`` (2x4,
    every parameter and Adam moment split) continues with the replicated run's losses (1e-5)
    and ends where it did; ``evaluate`` on that run's sharded parameters gives the mIoU the run
    logged."""
    from attnzoo.evaluate import evaluate_run

    workdir, config, result = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    (copy / "metrics.jsonl").unlink()
    config = config.copy_and_resolve_references()
    config.update_from_flattened_dict({"mesh.fsdp": 4, "mesh.min_shard_size": 0})
    resumed = engine.train_and_evaluate(config, copy)
    lines = jsonl(copy / "metrics.jsonl")
    assert [r["step"] for r in lines if r["split"] == "train"] == [3, 4]
    original = {r["step"]: r["loss"] for r in jsonl(workdir / "metrics.jsonl") if "loss" in r}
    for r in lines:
        if "loss" in r:
            assert r["loss"] == pytest.approx(original[r["step"]], rel=1e-5)
    assert resumed["mIoU"] == pytest.approx(result["mIoU"], abs=1e-3)
    evaluated = evaluate_run(copy)
    assert evaluated["step"] == 4 and evaluated["mIoU"] == pytest.approx(resumed["mIoU"],
                                                                         rel=1e-6)
