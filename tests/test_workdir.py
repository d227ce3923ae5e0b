"""A workdir is safe to train in (``attnzoo.engine.workdir`` and the loop's checks): a rerun with
a config that reshapes the model or optimizer is refused before anything is touched, an
unreadable newest checkpoint is moved aside and trained again, one live run at a time, and
every setting that can be checked is checked before the first step."""

import os
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import ROOT, copy_with_damaged_step, jsonl, tiny_config

from attnzoo import engine
from attnzoo.engine.workdir import WorkdirError, WorkdirLock


def snapshot(directory):
    """Every file under ``directory`` with its size and modification time (the lock file
    holds the pid of the last run that entered, not data)."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".attnzoo.lock")}


@pytest.mark.parametrize("key,value,field", [
    ("optimizer.clip_norm", 1.0, "optimizer.clip_norm: 0.0 -> 1.0"),
    pytest.param("model.name", "fcn_r18_d8", "model.name: 'danet_r18_d8' -> 'fcn_r18_d8'",
                 marks=pytest.mark.slow),
])
def test_a_rerun_that_reshapes_the_state_is_refused_and_touches_nothing(run, tmp_path, key,
                                                                       value, field):
    workdir, config, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    before = snapshot(copy)
    changed = tiny_config(config.dataset.data_dir, **{key: value})
    with pytest.raises(WorkdirError, match=f"another configuration .*{field}.*new --workdir"
                                           f".*init_from.*force_resume"):
        engine.train_and_evaluate(changed, copy)
    assert snapshot(copy) == before
    changed.force_resume = True  # the trees do not fit: an error, never a fresh start
    with pytest.raises(ValueError, match="does not fit the model and optimizer"):
        engine.train_and_evaluate(changed, copy)
    assert snapshot(copy) == before


def test_a_workdir_whose_checkpoints_are_gone_is_still_its_runs(run, tmp_path):
    """``rm -r W/checkpoints``, then a run of another model started afresh, overwrote
    ``config.json`` and added a second run's rows to ``metrics.jsonl``: the run's
    ``config.json`` keeps the workdir's identity."""
    workdir, config, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints")
    before = snapshot(copy)
    changed = tiny_config(config.dataset.data_dir, **{"model.name": "fcn_r18_d8"})
    with pytest.raises(WorkdirError, match=r"holds a run \(config.json; no checkpoint\) of another "
                                           r"configuration .*model.name: 'danet_r18_d8' -> "
                                           r"'fcn_r18_d8'.*force_resume"):
        engine.train_and_evaluate(changed, copy)
    assert snapshot(copy) == before
    (copy / "config.json").write_text("{not json")
    with pytest.raises(WorkdirError, match="config.json is not readable JSON"):
        engine.train_and_evaluate(changed, copy)


@pytest.mark.slow
def test_an_unreadable_newest_checkpoint_is_moved_aside_and_trained_again(run, tmp_path):
    workdir, config, result = run
    copy = copy_with_damaged_step(workdir, tmp_path / "copy", damage=lambda b: b[: len(b) // 2])
    (copy / "metrics.jsonl").unlink()
    resumed = engine.train_and_evaluate(config, copy)  # num_steps 4, as the finished run
    assert [r["step"] for r in jsonl(copy / "metrics.jsonl") if r["split"] == "train"] == [3, 4]
    (aside,) = list((copy / "checkpoints.unreadable").iterdir())
    assert aside.name.startswith("4-") and (aside / "state").is_dir()
    assert resumed["mIoU"] == result["mIoU"]
    assert engine.Checkpoints(copy / "checkpoints", read_only=True).steps() == [2, 4]


@pytest.mark.slow
def test_a_step_whose_config_is_unreadable_is_set_aside_with_one_true_warning(run, tmp_path,
                                                                               caplog):
    """Step 4's config item damaged, its arrays intact: the warning said "using the one
    before" and then step 4 was resumed. A step is its state and its config: one warning says
    it is moved aside, steps 3-4 are trained again and give the same result."""
    import logging

    workdir, config, result = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    for f in (copy / "checkpoints" / "4" / "config").iterdir():
        if f.name != "commit_success.txt":
            f.write_text("{damaged")
    (copy / "metrics.jsonl").unlink()
    with caplog.at_level(logging.WARNING, logger="attnzoo"):
        resumed = engine.train_and_evaluate(config, copy)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and r.name == "attnzoo"]
    assert len(warnings) == 1 and "checkpoint step 4" in warnings[0], warnings
    assert "moved to" in warnings[0] and warnings[0].endswith("using the one before")
    assert [r["step"] for r in jsonl(copy / "metrics.jsonl") if r["split"] == "train"] == [3, 4]
    assert resumed["mIoU"] == result["mIoU"]


@pytest.mark.slow  # 20 s
def test_a_resume_from_an_older_step_leaves_one_curve(run, tmp_path):
    """The newest checkpoint gone (a run killed after logging steps it never saved): the
    resume from step 2 trains 3-4 again. metrics.jsonl keeps one row per step and split (the
    replayed ones move to metrics.replayed.jsonl; they were there twice), and TensorBoard is
    told to hide the old events from step 3 on (a SessionLog START with purge step 3)."""
    import tensorflow as tf

    workdir, config, result = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    before = jsonl(copy / "metrics.jsonl")
    resumed = engine.train_and_evaluate(config, copy)
    rows = jsonl(copy / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["split"] == "eval"] == [4]
    assert [r["step"] for r in rows if r["split"] == "start"] == [0, 2]
    assert jsonl(copy / "metrics.replayed.jsonl") == [r for r in before if r["step"] > 2]
    assert resumed["mIoU"] == result["mIoU"]
    purges = [e.step for f in sorted((copy / "tensorboard").iterdir())
              for e in tf.compat.v1.train.summary_iterator(str(f))
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert purges[-1] == 3, purges


@pytest.mark.slow
def test_resuming_may_change_the_schedule_length_and_logging(run, tmp_path):
    workdir, config, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    longer = tiny_config(config.dataset.data_dir, num_steps=6, log_every=2, eval_every=6)
    engine.train_and_evaluate(longer, copy)
    assert [r["step"] for r in jsonl(copy / "metrics.jsonl") if r["split"] == "train"][-2:] \
        == [4, 6]


def test_one_live_run_per_workdir_and_a_killed_one_leaves_no_lock(tmp_path):
    with WorkdirLock(tmp_path):
        with pytest.raises(WorkdirError, match=f"{tmp_path} is in use by another run \\(pid "
                                               f"{os.getpid()}\\)"):
            with WorkdirLock(tmp_path):
                pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from attnzoo.engine.workdir import WorkdirLock; "
         f"lock = WorkdirLock(Path({str(tmp_path)!r})).__enter__(); print('held', flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirError, match="in use by another run"):
        WorkdirLock(tmp_path).__enter__()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with WorkdirLock(tmp_path):  # the kernel released it with the process
        pass
    (tmp_path / "file").write_text("")
    with pytest.raises(WorkdirError, match="is not writable"):
        WorkdirLock(tmp_path / "file" / "run").__enter__()


@pytest.mark.parametrize("overrides,match", [
    ({"eval_batch_size": 3}, "eval_batch_size=3 must be a positive multiple of the 8 devices"),
    ({"batch_size": 12}, "batch_size=12 must be a positive multiple of the 8 devices"),
    ({"dataset.eval_split": "val"}, "dataset.eval_split='val': dataset 'context_shapes' has "
                                    "the splits \\['train', 'validation'\\]"),
    ({"loss.kwargs": {"class_weight": (1.0, 2.0)}}, "loss.kwargs.class_weight has 2 entries; "
                                                    "dataset.num_classes=9"),
])
def test_settings_are_checked_before_the_first_step(context_shapes_dir, tmp_path, overrides,
                                                    match):
    with pytest.raises(ValueError, match=match):
        engine.train_and_evaluate(tiny_config(context_shapes_dir, **overrides), tmp_path / "w")
    assert not (tmp_path / "w" / "checkpoints").exists()
    assert not (tmp_path / "w" / "config.json").exists()
