"""The training loop (``attnzoo.engine.train``): logs and checkpoints, resume, determinism, NaN stop, init_from, kill -9, two processes."""

import json
import math
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, assert_trees_equal, final_params, jsonl, tiny_config

from attnzoo import backbones, engine, sharding
from attnzoo.data import context_shapes as cs
from attnzoo.engine import optim


@pytest.mark.parametrize("key,value,match", [
    ("batch_size", 0, "batch_size"), ("num_steps", -3, "num_steps"),
    ("eval_every", 0, "eval_every"),
])
def test_bad_loop_settings_name_the_field(tmp_path, key, value, match):
    with pytest.raises(ValueError, match=match):
        engine.train_and_evaluate(tiny_config(tmp_path, **{key: value}), tmp_path / "run")


def test_run_writes_checkpoints_logs_and_predictions(run):
    workdir, config, result = run
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) \
        == [2, 4]
    lines = jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in lines if r["split"] == "train"] == [1, 2, 3, 4]
    (ev,) = [r for r in lines if r["split"] == "eval"]
    assert ev["step"] == 4 and ev["mIoU"] == pytest.approx(100 * result["mIoU"])  # percent
    assert list(ev["IoU"]) == list(cs.CLASSES)
    assert [r["devices"] for r in lines if r["split"] == "start"] == [8]
    assert all(math.isfinite(r["loss"]) for r in lines if r["split"] == "train")
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    from PIL import Image
    picture = np.asarray(Image.open(workdir / "predictions.png"))
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[1] >= 3 * 64
    size = (picture.shape[1] - 4) // 3  # image | ground truth | prediction, 2-pixel gaps
    truth = {tuple(c) for c in picture[:size, size + 2:2 * size + 2].reshape(-1, 3)}
    # the dataset's own colours (as docs/context_shapes.png), not the generic palette
    assert len(truth) >= 2 and truth <= set(cs.CLASS_COLOURS)
    assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "danet_r18_d8"
    assert result["classes"] == list(cs.CLASSES)
    assert 0.0 <= result["mIoU"] <= 1.0 and len(result["IoU"]) == len(cs.CLASSES)


@pytest.mark.slow
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
    # a learning rate this large overflows step 5's parameter update (a NaN one is refused by
    # the config's domains before anything runs)
    bad = tiny_config(config.dataset.data_dir, num_steps=8, **{"optimizer.learning_rate": 1e38})
    with pytest.raises(engine.NonFiniteLossError, match="update is inf .* at step 5"):
        engine.train_and_evaluate(bad, copy)
    assert engine.Checkpoints(copy / "checkpoints", read_only=True).steps() == [2, 4]
    assert_trees_equal(final_params(copy), final_params(workdir))


@pytest.mark.slow
def test_init_from_loads_a_converted_backbone(context_shapes_dir, tmp_path):
    from attnzoo.convert.backbones import save_backbone
    from attnzoo.engine.train import load_pretrained

    config = tiny_config(context_shapes_dir)
    bb = backbones.create("resnet18_v1c", output_stride=8, width=8, stem_width=8)
    variables = bb.init(jax.random.key(5), jnp.zeros((1, 64, 64, 3)), train=False)
    variables = jax.tree.map(lambda a: a + 0.25, variables)  # unlike any fresh init
    path = save_backbone(tmp_path / "bb", bb, variables, source="test")
    model = engine.build_model(config)
    tx, _ = optim.make_optimizer(config.optimizer, config.num_steps)
    mesh = sharding.make_mesh()
    st = load_pretrained(engine.init_state(model, tx, config, mesh), str(path))
    assert_trees_equal(st.params["backbone"], variables["params"])
    assert_trees_equal(st.batch_stats["backbone"], variables["batch_stats"])
    wide = backbones.create("resnet18_v1c", output_stride=8, width=16, stem_width=8)
    save_backbone(tmp_path / "wide", wide, wide.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    with pytest.raises(ValueError, match="init_from.*model .* vs checkpoint"):
        load_pretrained(st, str(tmp_path / "wide"))


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
    assert len(re.findall(r"^first step done [0-9.]+ s after the start", straight.stdout, re.M)) == 1

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


@pytest.mark.exhaustive  # 85 s
def test_a_full_disk_while_checkpointing_is_one_line_and_the_run_resumes(context_shapes_dir,
                                                                         tmp_path):
    """A 4 MiB tmpfs (in a private mount namespace, so nothing outside the test sees it) holds
    the first checkpoint and not the second: the run stops with one line naming the directory,
    the free space and the complete step (orbax printed 1,357 lines: its tracebacks, asyncio's
    and "Event loop is closed" from its writer callbacks); with room made, the same command
    resumes from step 2 and ends with an uninterrupted run's parameters."""
    import shlex

    disk = tmp_path / "disk"
    disk.mkdir()
    cmd = shlex.join(tiny_cli_flags(context_shapes_dir, disk / "w", 4, 2))
    script = (f"mount -t tmpfs -o size=4m tmpfs {disk} || exit 99\n"
              f"{cmd} > {tmp_path}/out1 2> {tmp_path}/err1; echo $? > {tmp_path}/rc1\n"
              f"mount -o remount,size=64m {disk}\n"
              f"{cmd} > {tmp_path}/out2 2> {tmp_path}/err2; echo $? > {tmp_path}/rc2\n"
              f"cp -r {disk}/w {tmp_path}/copy\n")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    if done.returncode == 99 or "unshare failed" in done.stderr:
        pytest.skip(f"no private tmpfs here (root and mount namespaces needed): {done.stderr}")
    err = (tmp_path / "err1").read_text().strip().splitlines()
    assert (tmp_path / "rc1").read_text().strip() == "2" and len(err) == 1, err[:20]
    assert err[0].startswith(f"error: saving a checkpoint to {disk / 'w' / 'checkpoints'} "
                             "failed: No space left on device (") and "MiB free there" in err[0]
    assert "the newest complete checkpoint is step 2" in err[0], err[0]
    assert (tmp_path / "rc2").read_text().strip() == "0", (tmp_path / "err2").read_text()[-3000:]
    assert "resuming from the checkpoint of step 2" in (tmp_path / "out2").read_text()
    straight = subprocess.run(tiny_cli_flags(context_shapes_dir, tmp_path / "straight", 4, 2),
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert_trees_equal(final_params(tmp_path / "copy"), final_params(tmp_path / "straight"))


DISTRIBUTED_WORKER = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
sys.path.insert(0, sys.argv[5])
from helpers import tiny_config
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
def test_init_from_loads_a_whole_trained_model(run, tmp_path):
    """``config.init_from`` = a run's workdir (or a converted mmseg model): every variable."""
    from attnzoo.engine.train import load_pretrained

    workdir, config, _ = run
    model = engine.build_model(config)
    tx, _ = optim.make_optimizer(config.optimizer, config.num_steps)
    fresh = engine.init_state(model, tx, config, sharding.make_mesh())
    loaded = load_pretrained(fresh, str(workdir))
    trained = final_params(workdir)
    assert_trees_equal(loaded.params, trained["params"])
    assert_trees_equal(loaded.batch_stats, trained["batch_stats"])
    other = tiny_config(config.dataset.data_dir, **{"model.head_channels": 24})
    wide = engine.build_model(other)
    with pytest.raises(ValueError, match="init_from.*does not fit the model's variables.*"
                                         "mis-shaped"):
        load_pretrained(engine.init_state(wide, tx, other, sharding.make_mesh()), str(workdir))
