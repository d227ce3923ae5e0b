"""Checkpoints (``attnzoo.engine.checkpoint``): keep policy, restore, corrupt steps skipped, checkpoints of earlier versions."""

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_equal, copy_with_damaged_step

from attnzoo import engine, sharding


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


def test_restore_gives_the_trained_model_and_prints_no_orbax_warnings(run, context_shapes_dir,
                                                                      caplog):
    workdir, config, _ = run
    with caplog.at_level(logging.INFO):
        model, variables, restored_config = engine.restore(workdir)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert restored_config.model.name == config.model.name
    from attnzoo.data.datasets import spec  # the run records none: its dataset's names

    assert restored_config.dataset.class_names == spec(config.dataset.name).classes
    for path in (workdir / "checkpoints", workdir / "checkpoints" / "4"):
        _, v, _ = engine.restore(path)
        assert_trees_equal(v, variables)
    _, v2, _ = engine.restore(workdir, step=2)
    assert not np.allclose(v2["params"]["head"]["cls"]["conv_seg"]["kernel"],
                           variables["params"]["head"]["cls"]["conv_seg"]["kernel"])
    out = model.apply(variables, jnp.ones((1, 64, 96, 3)))
    assert out["out"].shape == (1, 64, 96, config.dataset.num_classes)
    with pytest.raises(FileNotFoundError, match="no attnzoo checkpoints"):
        engine.restore(context_shapes_dir)


def test_corrupt_checkpoint_is_skipped_with_a_warning(run, tmp_path, caplog):
    workdir, config, _ = run
    copy = copy_with_damaged_step(workdir, tmp_path / "copy")
    with caplog.at_level(logging.WARNING, logger="attnzoo"):
        _, variables, _ = engine.restore(copy)
    assert "checkpoint step 4" in caplog.text and "unreadable" in caplog.text
    _, step2, _ = engine.restore(workdir, step=2)
    assert_trees_equal(variables, step2)


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoint_v0"


@pytest.mark.slow
def test_a_checkpoint_written_before_the_restructuring_restores():
    """``fixtures/checkpoint_v0`` was written by attnzoo at 90627af (before heads and models
    became registered families and the residual-block attention was renamed ``se`` ->
    ``attn``): an SE-ResNet-18 DANet after one AdamW step. It restores for inference with the
    logits it gave then, and as a train state (optimizer moments renamed too) for resuming.
    Tolerance 1e-6 relative: the same float32 computation on the same variables."""
    expected = np.load(FIXTURE / "expected.npz")
    model, variables, config = engine.restore(FIXTURE)
    assert config.model.name == "danet_r18_d8" and config.model.backbone_kwargs.attn == "se"
    assert "attn" in variables["params"]["backbone"]["layer1_0"]
    logits = model.apply(variables, jnp.asarray(expected["image"]))["out"]
    np.testing.assert_allclose(np.asarray(logits), expected["logits"], rtol=1e-6, atol=1e-6)

    tx, _ = engine.make_optimizer(config.optimizer, config.num_steps)
    target = engine.state.abstract_state(model, tx, config, sharding.make_mesh(jax.devices()[:1]))
    ckpts = engine.Checkpoints(FIXTURE / "checkpoints", read_only=True, async_save=False)
    state, step = ckpts.restore_state(target)
    ckpts.close()
    assert step == 1 and int(state.step) == 1
    assert_trees_equal(state.params, variables["params"])
    adam = state.opt_state[0][0]  # clip -> adamw: scale_by_adam's state
    assert "attn" in adam.mu["backbone"]["layer4_1"] and "se" not in adam.mu["backbone"]["layer4_1"]
    assert np.abs(np.asarray(adam.mu["backbone"]["layer4_1"]["attn"]["fc1"]["kernel"])).sum() > 0


FIXTURE_V1 = FIXTURE.with_name("checkpoint_v1")


@pytest.mark.slow  # 5 s; the old names' renames are checked alone in the default set
def test_a_run_written_under_an_old_model_name_restores_and_resumes_without_a_change():
    """``fixtures/checkpoint_v1`` was written by attnzoo at 8a488a0 (before the polarized
    family got one name): a narrow ``psas_r18_d8`` (polarized self-attention, sequential) after
    one SGD step, with its ``config.json``. It restores as ``polarized_r18_d8`` with
    ``mode="sequential"`` and gives the logits it gave then (1e-6: the same computation); the
    parallel layout would not. A rerun in that workdir with the new name resumes (nothing
    that shapes the state differs)."""
    from attnzoo.engine.config import from_fields, migrate
    from attnzoo.engine.workdir import shaping_differences

    expected = np.load(FIXTURE_V1 / "expected.npz")
    model, variables, config = engine.restore(FIXTURE_V1)
    assert config.model.name == "polarized_r18_d8"
    assert config.model.head_kwargs.mode == "sequential" and model.head.mode == "sequential"
    assert config.conv_implementation == "auto"  # a field the old config lacks: its default
    logits = np.asarray(model.apply(variables, jnp.asarray(expected["image"]))["out"])
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-6, atol=1e-6)
    parallel = model.clone(head=model.head.clone(mode="parallel"))
    assert not np.allclose(np.asarray(parallel.apply(variables, expected["image"])["out"]),
                           expected["logits"], rtol=1e-3, atol=1e-5)
    saved = json.loads((FIXTURE_V1 / "config.json").read_text())
    assert saved["model"]["name"] == "psas_r18_d8"
    new = migrate(saved)
    new.model.name, new.model.head_kwargs = "polarized_r18_d8", {"mode": "sequential"}
    assert shaping_differences(migrate(saved), new) == []
    assert shaping_differences(saved, from_fields({"model.name": "polarized_r18_d8"})) != []


def test_old_model_and_block_names_are_read_as_their_new_ones():
    from attnzoo.engine.config import migrate

    c = migrate({"model": {"name": "segformer_mit-b3", "head_kwargs": {"channels": 64}}})
    assert c.model.name == "segformer_mit_b3" and c.model.head_kwargs.to_dict() == {"channels": 64}
    c = migrate({"model": {"name": "psa_r50_d16", "backbone_kwargs": {"attn": "psa_s"}}})
    assert c.model.name == "polarized_r50_d16" and c.model.head_kwargs.to_dict() == {}
    assert c.model.backbone_kwargs.attn == "polarized"
    assert c.model.backbone_kwargs.attn_kwargs.to_dict() == {"mode": "sequential"}
    assert engine.build_model(c).backbone.attn == "polarized"


def _flip_one_bit(step_dir: Path) -> Path:
    """Flip one bit in the middle of the largest array file of a saved step; the file."""
    data = max((f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"),
               key=lambda f: f.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    return data


@pytest.mark.slow  # default run time
def test_a_flipped_bit_in_a_saved_array_is_caught_by_its_checksum(run, tmp_path, caplog):
    """One bit changed in a checkpoint's array file restores without error in orbax (a few
    values change); the checksums saved with the step find it: restore warns naming the step
    and the array and uses the step before; asked for by number it is an error naming them;
    training moves the step aside."""
    import shutil

    from attnzoo.engine.checkpoint import UnreadableCheckpointError

    workdir, config, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    _flip_one_bit(copy / "checkpoints" / "4")
    with caplog.at_level(logging.WARNING, logger="attnzoo"):
        _, variables, _ = engine.restore(copy)
    assert "checkpoint step 4" in caplog.text and "differ from the checksums" in caplog.text
    _, step2, _ = engine.restore(workdir, step=2)
    assert_trees_equal(variables, step2)
    with pytest.raises(UnreadableCheckpointError, match=r"step 4 .*checksums saved with them \("):
        engine.restore(copy, step=4)

    model = engine.build_model(config)
    tx, _ = engine.make_optimizer(config.optimizer, config.num_steps)
    target = engine.state.abstract_state(model, tx, config, sharding.make_mesh(jax.devices()[:1]))
    ckpts = engine.Checkpoints(copy / "checkpoints", async_save=False)
    unchecked = engine.Checkpoints(copy / "checkpoints", async_save=False, checksums=False)
    try:
        damaged, _ = unchecked.restore_state(target, 4)  # what resumed before checksums
        good, _ = engine.Checkpoints(workdir / "checkpoints", read_only=True).restore_state(target, 4)
        changed = sum(int((np.asarray(a) != np.asarray(b)).sum())
                      for a, b in zip(jax.tree.leaves(damaged), jax.tree.leaves(good)))
        assert changed > 0
        _, step = ckpts.restore_state(target, set_aside=copy / "checkpoints.unreadable")
        assert step == 2 and ckpts.steps() == [2]
        assert [p.name.split("-")[0] for p in (copy / "checkpoints.unreadable").iterdir()] == ["4"]
    finally:
        ckpts.close()
        unchecked.close()


def test_checksums_change_with_any_flipped_bit_and_not_with_the_sharding():
    from attnzoo.engine.checkpoint import _bit_sums, array_checksums

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((7, 5)).astype(np.float32),
              rng.standard_normal(33).astype(jnp.bfloat16),
              rng.integers(-9, 9, (4, 4), dtype=np.int32), rng.integers(0, 2, 6).astype(bool)]
    for a in arrays:
        base = np.asarray(_bit_sums(a))
        words = a.reshape(-1).view(np.uint8).copy()
        for byte in range(words.size):
            for bit in range(8):
                if a.dtype == bool and bit:  # a bool's other bits are not values
                    continue
                flipped = words.copy()
                flipped[byte] ^= 1 << bit
                sums = np.asarray(_bit_sums(flipped.view(a.dtype).reshape(a.shape)))
                assert (sums != base).all(), (a.dtype, byte, bit)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    mesh = sharding.make_mesh()
    spread = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    assert len(spread.sharding.device_set) == jax.device_count() > 1
    assert array_checksums({"x": spread}) == array_checksums({"x": x})
    assert array_checksums({"x": x})["arrays"]["x"].startswith("float32:")
    grid = jax.make_mesh((2, jax.device_count() // 2), ("a", "b"))
    for spec in (("b", "a"), (None, "a"), ()):  # blocks that are not runs of the flat order
        y = rng.standard_normal((4 * jax.device_count(), 6, 3)).astype(np.float32)
        split = jax.device_put(y, jax.sharding.NamedSharding(grid, jax.sharding.PartitionSpec(*spec)))
        assert array_checksums({"y": split}) == array_checksums({"y": y}), spec


def test_checksums_are_the_stated_weighted_sums():
    """``_bit_sums`` against the formula written as a loop over Python integers: words in
    row-major order, 8- and 16-bit types widened, 64-bit types as two little-endian halves."""
    from attnzoo.engine.checkpoint import _bit_sums

    def looped(words: list[int]) -> list[int]:
        first = second = 0
        for i, w in enumerate(words):
            first += w * (2 * i + 1)
            second += w * (((i * 0x9E3779B1 + 0x7F4A7C15) % 2**32) | 1)
        return [first % 2**32, second % 2**32]

    rng = np.random.default_rng(3)
    cases = {np.float32: np.uint32, jnp.bfloat16: np.uint16, np.int8: np.uint8,
             np.int32: np.uint32}
    for dtype, unsigned in cases.items():
        a = (rng.standard_normal((3, 5, 2)) * 50).astype(dtype)
        words = [int(w) for w in a.reshape(-1).view(unsigned)]
        assert _bit_sums(a).tolist() == looped(words), dtype
        assert _bit_sums(jnp.asarray(a)).tolist() == looped(words), dtype
    wide = rng.standard_normal(7)
    halves = [int(w) for v in wide.view(np.uint64) for w in (v % 2**32, v >> 32)]
    assert _bit_sums(wide).tolist() == looped(halves)
    flags = rng.integers(0, 2, 9).astype(bool)
    assert _bit_sums(flags).tolist() == looped([int(f) for f in flags])


def test_checkpoints_without_checksums_restore_unverified(tmp_path):
    state = {"w": np.arange(6.0, dtype=np.float32)}
    off = engine.Checkpoints(tmp_path, async_save=False, checksums=False)
    off.save(1, state, {"seed": 0})
    off.close()
    assert not (tmp_path / "1" / "checksums").exists()
    _flip_one_bit(tmp_path / "1")
    on = engine.Checkpoints(tmp_path, async_save=False)
    restored, step = on.restore_state({"w": jax.ShapeDtypeStruct((6,), np.float32)}, 1)
    on.close()
    assert step == 1 and restored["w"].shape == (6,)


def test_orbax_failure_noise_is_dropped_and_other_reports_kept(tmp_path, caplog):
    """What orbax's writer threads print after a failed save is dropped once a Checkpoints
    exists: its absl records of a full disk (the save's own error says it in one line),
    "Event loop is closed" from its abandoned callbacks and exceptions of its coroutines
    (``sys.unraisablehook``, process-wide: judged by ``_orbax_noise``; the whole command's
    stderr is checked by the full-disk test in test_train.py); an unrelated error record and
    another coroutine's exception are still shown."""
    import types

    engine.Checkpoints(tmp_path, async_save=False).close()
    full = ValueError("RESOURCE_EXHAUSTED: Failed to write 458473 bytes to file 11: No space "
                      "left on device [os_error_code='28']")
    with caplog.at_level(logging.ERROR):
        for name in ("absl", "asyncio"):
            logging.getLogger(name).error("save failed", exc_info=(ValueError, full, None))
            logging.getLogger(name).error(f"future: <_GatheringFuture exception={full!r}>")
        logging.getLogger("absl").error("another failure")
    assert [r.getMessage() for r in caplog.records] == ["another failure"]

    from attnzoo.engine.checkpoint import _orbax_noise

    def unraisable(exc, obj):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None,
                                     err_msg=None, object=obj)

    scope = {}
    exec(compile("async def write(): pass", "/site-packages/orbax/checkpoint/fake.py", "exec"),
         scope)
    exec(compile("async def mine(): pass", "/home/user/mine.py", "exec"), scope)
    orbax_coroutine, other_coroutine = scope["write"](), scope["mine"]()
    assert _orbax_noise(unraisable(RuntimeError("Event loop is closed"), None))
    assert _orbax_noise(unraisable(RuntimeError("coroutine ignored GeneratorExit"),
                                   orbax_coroutine))
    assert not _orbax_noise(unraisable(RuntimeError("coroutine ignored GeneratorExit"),
                                       other_coroutine))
    assert not _orbax_noise(unraisable(RuntimeError("another"), None))
    orbax_coroutine.close()
    other_coroutine.close()
