"""What makes a workdir safe to train in: one live run at a time, and a resume only with the
configuration that wrote its checkpoints.

A workdir remembers its configuration: every checkpoint holds the config that
wrote it, and ``config.json`` the run's (read when no checkpoint is left). A rerun
whose config differs in a field of :data:`SHAPING` (the
model, the classes, the optimizer's structure) is refused before anything
is touched; every other field may change on resume (``num_steps``, logging,
evaluation, data paths, the learning rate, ...).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import ml_collections

# Fields whose change gives the model or the optimizer state another structure.
SHAPING = ("model", "dataset.num_classes", "optimizer.name", "optimizer.momentum",
           "optimizer.nesterov", "optimizer.weight_decay", "optimizer.clip_norm",
           "optimizer.accumulate_steps")
# fields under SHAPING that shape nothing: how the step computes, not what it holds
NOT_SHAPING = ("model.remat",)


class WorkdirError(ValueError):
    """The workdir cannot be used as asked; nothing in it was changed."""


def flat_fields(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf field of a config (ConfigDict or nested dicts)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = json.loads(config.to_json_best_effort())
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):  # an empty dict adds no field
            out.update(flat_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def shaping_differences(saved: Any, new: ml_collections.ConfigDict) -> list[str]:
    """``"field: saved -> new"`` for each :data:`SHAPING` field that differs (fields a saved
    config of an earlier version lacks count as their defaults)."""
    from attnzoo.engine.config import default_config

    old = {**flat_fields(default_config()), **flat_fields(saved)}
    cur = flat_fields(new)
    keys = sorted(set(old) | set(cur))
    return [f"{k}: {old.get(k)!r} -> {cur.get(k)!r}" for k in keys
            if _under(k, SHAPING) and not _under(k, NOT_SHAPING) and old.get(k) != cur.get(k)]


def _under(field: str, names: tuple[str, ...]) -> bool:
    return any(field == s or field.startswith(s + ".") for s in names)


def workdir_config(workdir: Path) -> dict[str, Any] | None:
    """The config of the run ``workdir`` holds, from its ``config.json`` (the run's identity
    outlives its checkpoints: deleting ``checkpoints/`` does not hand the workdir to another
    model), or None for a new workdir."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise WorkdirError(f"{path} is not readable JSON ({err}); it names the run this workdir "
                           "holds: train in a new --workdir, or remove the file") from None


def check_resume(workdir: Path, saved: Any, config: ml_collections.ConfigDict,
                 what: str = "checkpoints") -> None:
    """Refuse to resume ``workdir`` (``what``, its checkpoints or its ``config.json``, written
    with ``saved``) with ``config`` when a shaping field differs, unless
    ``config.force_resume``."""
    diffs = shaping_differences(saved, config)
    if diffs and not config.get("force_resume", False):
        raise WorkdirError(
            f"workdir {workdir} holds {what} of another configuration (differs in: "
            f"{'; '.join(diffs)}); nothing was changed. Train in a new --workdir (add "
            f"--config.init_from={workdir} to start from its weights), or pass "
            f"--config.force_resume=True to resume with the new values")


class WorkdirLock:
    """An exclusive lock on ``workdir`` for this process (``flock``: the kernel releases it
    when the process ends, so a killed run leaves nothing stuck). Entering checks that the
    workdir is writable and not in use by another live run."""

    def __init__(self, workdir: Path, process_index: int = 0) -> None:
        self.path = Path(workdir) / f".attnzoo.lock.{process_index}"
        self._file = None

    def __enter__(self) -> WorkdirLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        except OSError as err:
            raise WorkdirError(f"workdir {self.path.parent} is not writable: {err}") from err
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            pid = self._file.read().strip() or "unknown"
            self._file.close()
            raise WorkdirError(
                f"workdir {self.path.parent} is in use by another run (pid {pid}); wait for it, "
                f"stop it, or use another --workdir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
