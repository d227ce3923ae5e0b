"""orbax checkpoints of a run: periodic (asynchronous) saves, the latest N plus the best by
mIoU kept, resume from the newest readable one, and restore for inference.

A run's checkpoints live in ``WORKDIR/checkpoints/<step>/`` with two items:
``state`` (the :class:`~attnzoo.engine.state.TrainState` arrays) and ``config``
(the run's config as JSON, so a checkpoint alone rebuilds its model). orbax
writes each step into a temporary directory and renames it when complete, so
a crash mid-save never leaves a half-written step that looks finished; a
step that is present but unreadable (corrupted on disk) is skipped with a
warning in favour of the one before it.

Each step also holds ``checksums``: two position-weighted sums of every saved array's bits
(:func:`array_checksums`), compared with the restored arrays on every restore. A step whose
arrays differ from their sums (a flipped bit that orbax's own reading does not notice) is
treated as unreadable. Steps written before checksums existed restore unverified.

Checkpoints of earlier attnzoo versions restore: the one variable rename
since 0.1.0 (the attention module inside residual blocks, ``se`` -> ``attn``)
is read from the saved tree's metadata and applied while restoring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from attnzoo.engine.config import migrate
from attnzoo.sharding import make_mesh, path_name

log = logging.getLogger("attnzoo")
BEST_METRIC = "mIoU"


def _host_side_array_writes() -> None:
    """On the CPU backend, orbax writes each replicated array from one device, not a slice from
    each replica ("replica-parallel", its default off GPU): every device is in the same host
    memory, and the jitted slice per array shape made a run's first save take 7-9 s on 8
    simulated devices (0.3 s without; measured here). Other backends keep orbax's default."""
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if jax.default_backend() == "cpu" and getattr(handler, "_use_replica_parallel", False):
        with _quiet_orbax("Type handler registry type"):  # the override, said as a warning
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                override=True)


def _quiet_orbax_failures() -> None:
    """Drop, process-wide and once, what orbax and asyncio print when a save fails for want of
    space (``absl`` / ``asyncio`` records of it, with their tracebacks: hundreds of lines, said
    instead in one :class:`CheckpointWriteError`) and the exceptions its abandoned writer
    callbacks and coroutines raise after their event loop closed ("Event loop is closed",
    "Exception ignored in: <coroutine ...>" from orbax, in floods of thousands of lines;
    nothing is lost by them: the save's own error or the restore's outcome is reported)."""
    global _QUIET
    if _QUIET:
        return
    _QUIET = True

    def keep(record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            return _no_space_errno(record.exc_info[1]) is None and _no_space_errno(text) is None
        return _no_space_errno(text) is None

    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(keep)
    hook = sys.unraisablehook

    def unraisable(args: Any) -> None:
        if not _orbax_noise(args):
            hook(args)

    sys.unraisablehook = unraisable


_QUIET = False


def _orbax_noise(args: Any) -> bool:
    """Whether an unraisable exception (``sys.unraisablehook``'s argument) is "Event loop is
    closed" or comes from one of orbax's coroutines."""
    closed = isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in str(
        args.exc_value)
    code = getattr(args.object, "cr_code", None)
    return closed or (code is not None and "orbax" in code.co_filename)


class Checkpoints:
    """A run's checkpoint directory (``WORKDIR/checkpoints``).

    ``keep`` latest steps are kept, plus the ``keep_best`` steps with the
    highest validation mIoU among those saved with metrics. With ``checksums`` (the default)
    every save writes the arrays' :func:`array_checksums` and every restore of a step that
    has them verifies them; ``checksums=False`` neither writes nor verifies them (what they
    cost: ``benchmarks/checkpoint.py``).
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, keep_best: int = 1,
                 async_save: bool = True, read_only: bool = False,
                 checksums: bool = True) -> None:
        _host_side_array_writes()
        _quiet_orbax_failures()
        self.directory = Path(directory).absolute()
        policy = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=keep_best,  # keeps the largest
                           keep_checkpoints_without_metrics=False),
        ])
        self.checksums = checksums
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only, read_only=read_only, create=not read_only,
            save_interval_steps=0 if read_only else 1)
        # orbax warns "Given directory is read only" for every read-only manager (every
        # restore, evaluate and predict)
        with _quiet_orbax("Given directory is read only"):
            self.manager = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(),
                               "config": ocp.JsonCheckpointHandler(),
                               CHECKSUMS: ocp.JsonCheckpointHandler()})

    def steps(self) -> list[int]:
        """Saved steps, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, config: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> None:
        """Start saving ``state`` at ``step`` (asynchronously when enabled)."""
        config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
        if self.checksums:
            items[CHECKSUMS] = ocp.args.JsonSave(array_checksums(state))
        with self._write_errors():
            self.manager.save(step, args=ocp.args.Composite(**items),
                              metrics=dict(metrics) if metrics else None, force=True)

    def wait(self) -> None:
        """Block until pending saves are on disk."""
        with self._write_errors():
            self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _write_errors(self) -> Iterator[None]:
        """A save that fails for want of space (a full disk, a quota) as one
        :class:`CheckpointWriteError` naming the directory, its free space and the newest
        complete step (orbax's own reports of it are dropped: :func:`_quiet_orbax_failures`)."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - re-raised unless it is a full disk
            code = _no_space_errno(err)
            if code is None:
                raise
            free = shutil.disk_usage(self.directory).free
            steps = self.steps()
            resume = (f"the newest complete checkpoint is step {steps[-1]}" if steps
                      else "no checkpoint is complete")
            raise CheckpointWriteError(
                f"saving a checkpoint to {self.directory} failed: {os.strerror(code)} "
                f"({free / 2**20:.1f} MiB free there now); {resume}. Free some space and run "
                f"the same command again: it resumes from there") from None

    def restore_state(self, target: Any, step: int | None = None, *,
                      set_aside: Path | None = None) -> tuple[Any, int] | None:
        """``(state, step)`` from ``step`` or else the newest readable step; ``None`` if there is
        none. ``target`` is an abstract state (shapes, dtypes, shardings) to restore onto.
        With ``set_aside`` (a folder), an unreadable step is moved there (renamed, never
        deleted), so that training can save that step again. A readable step whose tree
        does not fit ``target`` raises :class:`CheckpointMismatchError`."""
        def load(s: int) -> tuple[Any, int]:
            self.config(s)  # a step is its state and its config: one unreadable, both are
            stored = self.manager.item_metadata(s)["state"]
            legacy = _names_block_attention(stored, "se")
            on_disk = _rename_block_attention(target, "attn", "se") if legacy else target
            _check_fits(stored, on_disk, self.directory / str(s))
            items = {"state": ocp.args.StandardRestore(on_disk)}
            verify = self.checksums and (self.directory / str(s) / CHECKSUMS).is_dir()
            if verify:
                items[CHECKSUMS] = ocp.args.JsonRestore()
            got = self.manager.restore(s, args=ocp.args.Composite(**items))
            restored = got["state"]
            if verify:
                _check_checksums(restored, got[CHECKSUMS])
            if legacy:
                log.info("checkpoint step %d in %s predates the 'se' -> 'attn' rename of "
                         "residual-block attention; renamed while restoring", s, self.directory)
                restored = _rename_block_attention(restored, "se", "attn")
            return restored, s

        def move(s: int) -> str:
            set_aside.mkdir(parents=True, exist_ok=True)
            to = set_aside / f"{s}-{time.strftime('%Y%m%d-%H%M%S')}"
            (self.directory / str(s)).rename(to)
            self.manager.reload()
            return f"moved to {to}"

        return newest_readable(self.directory, self.steps(), step, load,
                               on_unreadable=move if set_aside is not None else None)

    def config(self, step: int | None = None) -> ml_collections.ConfigDict:
        """The config saved with ``step`` (default: the newest), brought up to date
        (:func:`attnzoo.engine.config.migrate`)."""
        step = self.steps()[-1] if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return migrate(restored["config"])

    def close(self) -> None:
        self.manager.close()


@contextlib.contextmanager
def _quiet_orbax(prefix: str) -> Iterator[None]:
    """Drop orbax's log records that start with ``prefix`` while the block runs."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    absl_log = logging.getLogger("absl")
    absl_log.addFilter(keep)
    try:
        yield
    finally:
        absl_log.removeFilter(keep)


_RESIDUAL_BLOCK = re.compile(r"layer\d+_\d+")


def _names_block_attention(tree: Any, name: str) -> bool:
    """Whether any residual block (``layer<i>_<j>``) in ``tree`` has a child called ``name``."""
    pattern = re.compile(rf"(^|/)layer\d+_\d+/{re.escape(name)}(/|$)")
    return any(pattern.search(path_name(path))
               for path, _ in jax.tree_util.tree_leaves_with_path(tree))


def _rename_block_attention(tree: Any, old: str, new: str, key: Any = None) -> Any:
    """``tree`` with the child ``old`` of every residual-block dict (``layer<i>_<j>``) renamed
    ``new``; dicts, lists, tuples, named tuples (optax states) and dataclasses (the train
    state) are rebuilt, other leaves kept."""
    if isinstance(tree, Mapping):
        inside = isinstance(key, str) and _RESIDUAL_BLOCK.fullmatch(key) is not None
        return {(new if inside and k == old else k): _rename_block_attention(v, old, new, k)
                for k, v in tree.items()}
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(tree, **{f.name: _rename_block_attention(
            getattr(tree, f.name), old, new) for f in dataclasses.fields(tree)})
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_rename_block_attention(v, old, new) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_rename_block_attention(v, old, new) for v in tree)
    return tree


CHECKSUMS = "checksums"
_CHECKSUM_VERSION = "bits-weighted-sums-v1"


_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}


def _words(block: np.ndarray) -> np.ndarray:
    """``block``'s bits as unsigned 32-bit words, shape ``block.shape + (k,)``: 8-, 16- and
    32-bit types widened (``k = 1``), bools as 0 / 1, 64-bit types as their two little-endian
    halves, low first (``k = 2``)."""
    block = np.ascontiguousarray(block)
    if block.dtype == np.bool_:
        return block.astype(np.uint32)[..., None]
    words = block.reshape(-1).view(_WORDS[block.dtype.itemsize]).astype(np.uint32)
    return words.reshape(block.shape + (-1,))


def _block_bit_sums(block: np.ndarray, index: tuple[slice, ...], shape: tuple[int, ...]
                    ) -> np.ndarray:
    """:func:`_bit_sums`' two sums over one block of an array of ``shape`` (the block at
    ``index``), each word weighted by its index in the whole array."""
    words = _words(block)
    full = tuple(shape) + words.shape[-1:]
    if words.shape == full:  # the whole array: no index arithmetic per axis
        i = np.arange(words.size, dtype=np.uint32).reshape(full)
    else:  # index mod 2**32, as the sums
        strides = np.cumprod((full[1:] + (1,))[::-1])[::-1] % 2**32
        i = np.zeros((), np.uint32)
        for where, n, stride in zip(tuple(index) + (slice(None),) * (len(full) - len(index)),
                                    full, strides):
            start, stop, _ = where.indices(n)
            i = i[..., None] + np.arange(start, stop, dtype=np.uint32) * np.uint32(stride)
    hashed = (i * np.uint32(0x9E3779B1) + np.uint32(0x7F4A7C15)) | np.uint32(1)
    return np.array([np.sum(words * (2 * i + 1), dtype=np.uint32),
                     np.sum(words * hashed, dtype=np.uint32)], np.uint32)


def _bit_sums(x: Any) -> np.ndarray:
    """``[sum_i b_i (2i + 1), sum_i b_i w_i] mod 2**32`` over an array's words ``b_i``
    (:func:`_words`, in row-major order) and ``w_i = (i * 0x9E3779B1 + 0x7F4A7C15) | 1``, an
    odd multiplicative hash of ``i``. Every weight is odd, so a change of one word (any
    flipped bit) always changes both sums; integer sums are exact in any order, so the result
    does not depend on sharding or backend. Computed on the host from this process's shards
    (replica 0 of each; no program to compile): an array with shards in other processes
    holds only this process's part (:func:`array_checksums` adds the parts)."""
    if not isinstance(x, jax.Array):
        block = np.asarray(x)
        return _block_bit_sums(block, (), block.shape)
    sums = np.zeros(2, np.uint32)
    for shard in x.addressable_shards:
        if shard.replica_id == 0:
            sums += _block_bit_sums(np.asarray(shard.data), shard.index, x.shape)
    return sums


def array_checksums(tree: Any) -> dict[str, Any]:
    """``{"version", "arrays": {path: "dtype:sum1:sum2"}}`` for every array of ``tree``
    (:func:`_bit_sums`; the parts of arrays sharded over processes added over all of them,
    so every process must call it, as they all save and restore)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    sums = np.stack([_bit_sums(leaf) for _, leaf in leaves]) if leaves else np.zeros((0, 2))
    if any(isinstance(leaf, jax.Array) and not leaf.is_fully_addressable for _, leaf in leaves):
        sums = np.sum(multihost_utils.process_allgather(sums), axis=0, dtype=np.uint32)
    return {"version": _CHECKSUM_VERSION, "arrays": {
        path_name(path): f"{leaf.dtype if hasattr(leaf, 'dtype') else np.asarray(leaf).dtype}:{int(a):08x}:{int(b):08x}"
        for (path, leaf), (a, b) in zip(leaves, sums)}}


class ChecksumMismatchError(ValueError):
    """A restored array differs from the checksum saved with it (the step is damaged)."""


def _check_checksums(tree: Any, saved: Mapping[str, Any]) -> None:
    """Raise :class:`ChecksumMismatchError` naming the first array of ``tree`` whose
    :func:`array_checksums` differ from ``saved`` (arrays restored as another dtype, and
    checksums of another version, are not compared)."""
    if saved.get("version") != _CHECKSUM_VERSION:
        return
    expected = saved["arrays"]

    def differs(path: str, value: str) -> bool:
        want = expected.get(path, value)
        return want.split(":")[0] == value.split(":")[0] and want != value

    bad = [path for path, value in array_checksums(tree)["arrays"].items() if differs(path, value)]
    if bad:
        raise ChecksumMismatchError(
            f"{len(bad)} array(s) differ from the checksums saved with them "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): its files changed "
            f"after the save")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written for want of space; the steps before it are intact."""

    user_error = True  # the commands print its message on one line


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space_errno(err: BaseException | str) -> int | None:
    """``ENOSPC`` / ``EDQUOT`` if ``err`` (an exception, its causes, or a log message) says a
    write failed for want of space (tensorstore reports it as ``[os_error_code='28']``)."""
    texts = [err] if isinstance(err, str) else []
    seen: set[int] = set()
    while isinstance(err, BaseException) and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return err.errno
        texts.append(str(err))
        err = err.__cause__ or err.__context__
    for code in _NO_SPACE:
        if any(f"os_error_code='{code}'" in t or os.strerror(code) in t for t in texts):
            return code
    return None


class CheckpointMismatchError(ValueError):
    """A readable checkpoint holds another tree than the model and optimizer expect."""


def _check_fits(stored: Any, target: Any, where: Path) -> None:
    """Raise :class:`CheckpointMismatchError` unless the stored tree has ``target``'s leaves."""
    have = {path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(stored)}
    want = {path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(target)}
    if have != want:
        diff = sorted(have - want)[:3] + sorted(want - have)[:3]
        raise CheckpointMismatchError(
            f"checkpoint {where} does not fit the model and optimizer of this config "
            f"({len(have - want)} stored entries not expected, {len(want - have)} missing, e.g. "
            f"{', '.join(diff)})")


class UnreadableCheckpointError(ValueError):
    """A checkpoint step asked for by number does not load (damaged on disk)."""


def newest_readable(directory: Path, steps: list[int], step: int | None,
                    load: Callable[[int], Any],
                    on_unreadable: Callable[[int], str | None] | None = None) -> Any:
    """``load(step)``, or else ``load`` of the newest of ``steps`` that loads, skipping (with a
    one-line warning ending in what ``on_unreadable(step)`` did, unless it returns None: the
    caller reports it) every one that raises; ``None`` if none does. An explicit ``step`` is not skipped: one that is not there or does not load is a
    FileNotFoundError / :class:`UnreadableCheckpointError` naming it (one line in the commands);
    a :class:`CheckpointMismatchError` propagates."""
    if step is not None:
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint step {step} in {directory}; its steps: {steps}")
        try:
            return load(step)
        except (CheckpointMismatchError, UnreadableCheckpointError):
            raise
        except Exception as err:  # noqa: BLE001 - whatever orbax raises for a damaged step
            raise UnreadableCheckpointError(
                f"checkpoint step {step} in {directory} is unreadable ({_first_line(err)}); "
                f"without --step the newest readable one of {steps} is used") from err
    for s in reversed(steps):
        try:
            return load(s)
        except CheckpointMismatchError:
            raise
        except Exception as err:  # noqa: BLE001 - any unreadable step is skipped
            done = on_unreadable(s) if on_unreadable is not None else "skipped"
            if done is not None:
                log.warning("checkpoint step %d in %s is unreadable (%s); %s, using the one "
                            "before", s, directory, _first_line(err), done)
    return None


def _first_line(err: BaseException) -> str:
    """``Type: first line`` of ``err``, or of what it wraps when it is an
    :class:`UnreadableCheckpointError` (the step restored inside another restore)."""
    if isinstance(err, UnreadableCheckpointError) and err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def checkpoint_dir(workdir_or_path: str | Path) -> tuple[Path, int | None]:
    """``(checkpoints directory, step or None)`` for a workdir, its ``checkpoints`` folder or
    one step's folder."""
    p = Path(workdir_or_path).absolute()
    if (p / "checkpoints").is_dir():
        return p / "checkpoints", None
    if p.name.isdigit() and (p / "state").is_dir():
        return p.parent, int(p.name)
    if p.is_dir() and any(c.name.isdigit() for c in p.iterdir()):
        return p, None
    raise FileNotFoundError(
        f"no attnzoo checkpoints at {p}: expected a training workdir (with checkpoints/), a "
        f"checkpoints directory, or one step's directory (checkpoints/<step>)"
    )


def restore(workdir_or_path: str | Path, *, step: int | None = None,
            config_overrides: Mapping[str, Any] | None = None
            ) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict]:
    """``(model, variables, config)`` ready for inference from a run's checkpoint.

    ``workdir_or_path``: a training workdir, its ``checkpoints`` directory or
    one step's directory; ``step`` picks a step (default: the newest readable).
    ``config_overrides`` (e.g. ``{"model.memory_efficient": True}``) change the
    rebuilt model without changing its parameters. ``config.dataset.class_names`` names the
    model's classes: those the run records (a converted model's), else its built-in dataset's.
    Needs no TensorFlow.
    """
    model, variables, config, _ = restore_with_step(workdir_or_path, step=step,
                                                    config_overrides=config_overrides)
    return model, variables, config


def restore_with_step(workdir_or_path: str | Path, *, step: int | None = None,
                      config_overrides: Mapping[str, Any] | None = None
                      ) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict, int]:
    """:func:`restore` and the step it restored."""
    directory, path_step = checkpoint_dir(workdir_or_path)
    ckpts = Checkpoints(directory, read_only=True, async_save=False)
    try:
        step = path_step if step is None else step
        steps = ckpts.steps()
        if step is None and not steps:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        restored = newest_readable(directory, steps, step,
                                   lambda s: _restore_step(ckpts, s, config_overrides))
        if restored is None:
            raise FileNotFoundError(f"no readable checkpoint in {directory}")
        return restored
    finally:
        ckpts.close()


def _restore_step(ckpts: Checkpoints, step: int, config_overrides: Mapping[str, Any] | None
                  ) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict, int]:
    from attnzoo.engine import optim, state as state_lib

    config = _with_class_names(ckpts.config(step))
    config.update_from_flattened_dict(dict(config_overrides or {}))
    model = state_lib.build_model(config)
    tx, _ = optim.make_optimizer(config.optimizer, config.num_steps)
    mesh = make_mesh(jax.local_devices()[:1])  # this process alone, also multi-host
    state, _ = ckpts.restore_state(state_lib.abstract_state(model, tx, config, mesh), step)
    return model, state.variables(), config, step


def _with_class_names(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with ``dataset.class_names`` set to its built-in dataset's names when it
    records none (a folder dataset's come from its ``classes.txt`` when it is read)."""
    from attnzoo.data.datasets import spec

    if not config.dataset.get("class_names"):
        try:
            names = spec(config.dataset.name).classes
        except ValueError:  # a dataset this version does not know
            names = ()
        if len(names) == config.dataset.num_classes:
            config.dataset.class_names = tuple(names)
    return config


def save_pretrained(directory: str | Path, variables: Mapping[str, Any],
                    config: ml_collections.ConfigDict) -> Path:
    """Write converted ``variables`` as step 0 of a run in ``directory`` (``checkpoints/0`` with
    a fresh optimizer state, and ``config.json``), so that :func:`restore`, ``python -m
    attnzoo.evaluate`` / ``predict`` and ``config.init_from`` take it like a trained run."""
    from attnzoo.engine import optim, state as state_lib

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    model = state_lib.build_model(config)
    tx, _ = optim.make_optimizer(config.optimizer, config.num_steps)
    fresh = state_lib.abstract_state(model, tx, config, make_mesh(jax.local_devices()[:1]))
    params = jax.tree.map(lambda t, v: jax.numpy.asarray(v, t.dtype), fresh.params,
                          dict(variables["params"]))
    batch_stats = jax.tree.map(lambda t, v: jax.numpy.asarray(v, t.dtype), fresh.batch_stats,
                               dict(variables.get("batch_stats", {})))
    state = state_lib.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(int(config.seed))))
    ckpts = Checkpoints(directory / "checkpoints", async_save=False)
    try:
        ckpts.save(0, state, config)
        ckpts.wait()
    finally:
        ckpts.close()
    (directory / "config.json").write_text(config.to_json_best_effort(indent=2))
    return directory
