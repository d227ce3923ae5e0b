"""The training loop: data -> sharded train steps -> evaluation -> checkpoints, resumable."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from attnzoo._checks import mismatch_report
from attnzoo.backbones import match_layer_form
from attnzoo.engine import optim, steps
from attnzoo.engine import state as state_lib
from attnzoo.engine.checkpoint import Checkpoints, newest_readable
from attnzoo.engine.config import check_domains, migrate
from attnzoo.engine.logging import RunLogger, class_table
from attnzoo.engine.workdir import WorkdirLock, check_resume, workdir_config
from attnzoo.ops.conv import describe_implementation
from attnzoo.pixels import IMAGENET_MEAN, IMAGENET_STD, denormalize_image
from attnzoo.sharding import describe_layout, local_batch_size, make_mesh


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped, the last good checkpoint is kept."""

    user_error = True  # the commands print its message on one line


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuse settings outside their domain (:func:`attnzoo.engine.config.check_domains`) or
    inconsistent with each other (the mesh and the devices, the steps and the accumulation, the
    loss and the model's outputs), before anything is built."""
    check_domains(config)
    make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)  # its sizes fit the devices
    state_lib.loss_terms(state_lib.build_model(config), config)  # the loss fits the model
    k = config.optimizer.accumulate_steps
    if config.num_steps % k:
        raise ValueError(f"config.num_steps={config.num_steps} must be a multiple of "
                         f"optimizer.accumulate_steps={k}")


SUMMARY_METRICS = ("mIoU", "mAcc", "aAcc", "mDice")


def start_notes(config: ml_collections.ConfigDict, model: Any, params: Any, mesh: Any,
                rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lines worth a user's attention when a run starts: a schedule whose warm-up outlasts
    the run, heads far wider than the features they read, and, on resume, a device count
    other than the run's last start (from ``metrics.jsonl``'s ``"start"`` rows, ``rows``)."""
    notes = []
    updates = config.num_steps // config.optimizer.accumulate_steps
    if config.optimizer.warmup_steps > updates:
        notes.append(f"warning: optimizer.warmup_steps={config.optimizer.warmup_steps} exceeds "
                     f"the run's {updates} updates: the learning rate never reaches its peak "
                     f"{config.optimizer.learning_rate:g}")
    widths = _head_widths(model, params)
    if widths is not None:
        notes.append(widths)
    starts = [r for r in rows if r.get("split") == "start"]
    devices = int(mesh.devices.size)
    if starts and starts[-1].get("devices") != devices:
        before = starts[-1]["devices"]
        notes.append(f"note: the run continues on {devices} devices; it last ran on {before} "
                     f"(global batch {config.batch_size} unchanged: per-device batch "
                     f"{config.batch_size // devices} instead of {config.batch_size // before})")
    return notes


def _head_widths(model: Any, params: Any) -> str | None:
    """A line when a model's decode heads are wider than the backbone features they read and
    hold most of its parameters (a 512-wide head on a 16-wide backbone), else None."""
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if backbone is None or head is None or getattr(model, "neck", None) is not None \
            or not isinstance(model.in_feature, str):
        return None
    counts = {k: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(v)) for k, v in params.items()}
    total, in_backbone = sum(counts.values()), counts.get("backbone", 0)
    feature_width = backbone.feature_info()[model.in_feature][0]
    width = getattr(head, "channels", 0)
    if width > feature_width and total - in_backbone > in_backbone:
        return (f"note: the {type(head).__name__} is {width} wide on {feature_width}-wide "
                f"backbone features ({model.in_feature}): {total - in_backbone:,} of the "
                f"{total:,} parameters are outside the backbone (model.head_channels sets the "
                f"head's width)")
    return None


def load_pretrained(state: state_lib.TrainState, path: str) -> state_lib.TrainState:
    """``config.init_from``: put pretrained variables into ``state`` (optimizer state untouched).

    ``path`` is a converted backbone (``python -m attnzoo.convert --source timm:...``; fills
    the segmentor's ``backbone``) or a whole model (a run's workdir or checkpoint, or
    ``python -m attnzoo.convert --source mmseg:...``; fills every variable, for fine-tuning),
    its layers stacked or unrolled as the model's (``model.scan_layers``).
    ValueError listing every missing, unexpected and mis-shaped entry."""
    from attnzoo.convert.backbones import META_FILE, load_backbone
    from attnzoo.engine.checkpoint import restore

    if (Path(path) / META_FILE).is_file():
        part, (_, variables) = "backbone", load_backbone(path)
    else:
        part, (_, variables, _) = None, restore(path)
    new = {}
    for collection in ("params", "batch_stats"):
        whole = getattr(state, collection)
        ours = whole if part is None else whole[part]
        # a plain model's layers into a scanned one's stack, or back
        theirs = match_layer_form(variables.get(collection, {}), ours)
        ours_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(ours)}
        theirs_flat = {jax.tree_util.keystr(k): v
                       for k, v in jax.tree_util.tree_leaves_with_path(theirs)}
        report = mismatch_report(
            missing=sorted(set(ours_flat) - set(theirs_flat)),
            unexpected=sorted(set(theirs_flat) - set(ours_flat)),
            mis_shaped=[f"{k}: model {ours_flat[k].shape} vs checkpoint {theirs_flat[k].shape}"
                        for k in sorted(set(ours_flat) & set(theirs_flat))
                        if ours_flat[k].shape != theirs_flat[k].shape])
        if report:
            raise ValueError(f"config.init_from={path!r} does not fit the model's "
                             f"{part or 'variables'} ({collection}): {report}")
        # each array where the model's is (a model without BatchNorm has no statistics)
        loaded = jax.tree.map(lambda a, b: jax.device_put(jnp.asarray(b, a.dtype), a.sharding),
                              ours, theirs)
        new[collection] = loaded if part is None else {**whole, part: loaded}
    return state.replace(**new)


def prediction_picture(model: Any, variables: Any, batch: Mapping[str, np.ndarray],
                       num_classes: int, ignore_index: int, count: int = 4, *,
                       colours: np.ndarray | None = None,
                       pixel_mean: Sequence[float] = IMAGENET_MEAN,
                       pixel_std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Rows of image (normalised with ``pixel_mean`` / ``pixel_std``, shown as RGB) | ground
    truth | prediction for the first ``count`` examples, classes in ``colours``
    (:func:`attnzoo.viz.colorize`)."""
    from attnzoo import viz

    images = np.asarray(batch["image"][:count])
    labels = np.asarray(batch["label"][:count])
    pred = np.asarray(jax.jit(lambda v, x: model.apply(v, x)["out"].argmax(-1))(variables, images))
    rows = [[denormalize_image(im, pixel_mean, pixel_std), viz.colorize(lb, num_classes, ignore_index, colours=colours),
             viz.colorize(p, num_classes, ignore_index, colours=colours)]
            for im, lb, p in zip(images, labels, pred) if (lb != ignore_index).any()]
    return viz.grid(rows)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming from its newest readable checkpoint), evaluate
    every ``eval_every`` steps and at the end, and return the final evaluation metrics (with
    ``"classes"``). Writes ``checkpoints/``, ``tensorboard/``, ``metrics.jsonl``,
    ``predictions.png`` and ``config.json`` under ``workdir``.

    Refused before anything in ``workdir`` is written: another live run in it, a config
    that differs from its checkpoints' in a field that shapes the model or optimizer
    (:mod:`attnzoo.engine.workdir`), batch sizes that do not divide over the devices,
    missing splits, class weights of the wrong length. An unreadable newest checkpoint is
    moved to ``checkpoints.unreadable/`` and training resumes from the one before. A config of
    an earlier version is brought up to date first (:func:`attnzoo.engine.config.migrate`)."""
    config = migrate(config)
    check_config(config)
    workdir = Path(workdir).absolute()
    with WorkdirLock(workdir, jax.process_index()):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    from attnzoo import viz
    from attnzoo.data import input as data_input, spec

    started = time.perf_counter()
    mesh = make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)
    # everything that can be checked before the first step is checked here, before any file of
    # the workdir is written
    local_batch_size(config.batch_size, mesh, "batch_size")
    local_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    weights = config.loss.kwargs.get("class_weight")
    if weights is not None and len(weights) != config.dataset.num_classes:
        raise ValueError(f"loss.kwargs.class_weight has {len(weights)} entries; "
                         f"dataset.num_classes={config.dataset.num_classes}")
    model = state_lib.build_model(config)
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_steps)
    builder = data_input.prepared_builder(config.dataset)
    data_input.check_splits(config.dataset, builder)
    names = data_input.class_names(config.dataset, builder)
    normalisation = {k: tuple(config.model[k]) for k in ("pixel_mean", "pixel_std")}
    ckpts = Checkpoints(workdir / "checkpoints", keep=config.keep, keep_best=config.keep_best,
                        async_save=config.async_checkpoints)
    logger = None
    try:
        # the config of the step training will resume from (the state restore below says
        # which steps are unreadable and moves them aside: a step is its state and config)
        saved = newest_readable(ckpts.directory, ckpts.steps(), None, ckpts.config,
                                on_unreadable=lambda step: None)
        if saved is not None:
            check_resume(workdir, saved, config)
        elif (recorded := workdir_config(workdir)) is not None:
            check_resume(workdir, recorded, config, "a run (config.json; no checkpoint)")
        restored = ckpts.restore_state(
            state_lib.abstract_state(model, tx, config, mesh),
            set_aside=workdir / "checkpoints.unreadable" if jax.process_index() == 0 else None)
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        logger = RunLogger(workdir, config.num_steps,
                           start_step=0 if restored is None else restored[1])
        if restored is None:
            state = state_lib.init_state(model, tx, config, mesh)
            if config.init_from:
                state = load_pretrained(state, config.init_from)
                logger.message(f"initialised from {config.init_from}")
        else:
            state, step = restored
            logger.message(f"resuming from the checkpoint of step {step} in {ckpts.directory}")
        start = int(jax.device_get(state.step))
        train_step = steps.make_train_step(model, tx, schedule, config, mesh)
        eval_step = steps.make_eval_step(model, config, mesh)

        first_eval_batch: dict[str, jax.Array] = {}

        def run_eval(step: int) -> dict[str, Any]:
            def batches():  # keeps the first batch for the predictions picture
                for i, batch in enumerate(data_input.eval_batches(
                        config.dataset, batch_size=config.eval_batch_size, mesh=mesh,
                        builder=builder, **normalisation)):
                    if i == 0:
                        first_eval_batch.update(batch)
                    yield batch

            result = steps.evaluate(eval_step, state.variables(), batches())
            if not logger.logged(step, "eval"):  # a rerun of a finished run logs it once
                per_class = {n: 100 * float(v) for n, v in zip(names, result["IoU"])}
                logger.scalars(step, "eval", {k: 100 * result[k] for k in SUMMARY_METRICS},
                               extra={"IoU": per_class})
                logger.tensorboard(step, {f"eval_IoU/{n}": v for n, v in per_class.items()})
            logger.message(f"step {step}: mIoU {100 * result['mIoU']:.2f}  mAcc "
                           f"{100 * result['mAcc']:.2f}  aAcc {100 * result['aAcc']:.2f}")
            return result

        n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
        logger.message(f"{config.model.name}: {n_params:,} parameters; {config.num_steps} steps "
                       f"of global batch {config.batch_size}; evaluation metrics in percent")
        logger.message(describe_layout(mesh, config.batch_size, config.eval_batch_size,
                                       state.params))
        for line in start_notes(config, model, state.params, mesh, logger.rows):
            logger.message(line)
        logger.record(start, "start", {"devices": int(mesh.devices.size),
                                       "processes": jax.process_count()})
        logger.message(describe_implementation(config.conv_implementation))
        result: dict[str, Any] | None = None
        batches = data_input.train_batches(config.dataset, batch_size=config.batch_size, mesh=mesh,
                                           seed=config.seed, start_step=start, builder=builder,
                                           **normalisation)
        pending: tuple[int, dict[str, jax.Array]] | None = None  # last step's metrics, unchecked
        logger.progress(start, {})
        for step in range(start + 1, config.num_steps + 1):
            state, metrics = train_step(state, next(batches))
            if step == start + 1:  # what a start costs: data opened, state built, step compiled
                jax.block_until_ready(metrics)
                logger.message(f"first step done {time.perf_counter() - started:.1f} s after the "
                               "start (compilation included)")
            if pending is not None:
                _check_finite(*pending)
            pending = (step, metrics)
            last = step == config.num_steps
            log = step % config.log_every == 0 or last
            evaluate = step % config.eval_every == 0 or last
            save = step % config.checkpoint_every == 0 or last
            if log or evaluate or save:  # nothing of a non-finite step is logged, judged or saved
                _check_finite(*pending)
                pending = None
            if log:
                values = jax.device_get(metrics)
                logger.progress(step, {"loss": values["loss"], "lr": values["lr"]})
                logger.scalars(step, "train", values)
                if math.isfinite(logger.seconds_per_step):  # measured over the logged steps
                    logger.tensorboard(step, {
                        "throughput/step_time_s": logger.seconds_per_step,
                        "throughput/images_per_s": config.batch_size / logger.seconds_per_step})
            result = None
            if evaluate:
                result = run_eval(step)
            if save:
                ckpts.save(step, state, config,
                           metrics={"mIoU": result["mIoU"]} if result is not None else None)
        ckpts.wait()
        if result is None:  # nothing left to train: evaluate what was restored
            result = run_eval(start)
        logger.message(class_table(names, result))
        if jax.process_index() == 0:  # from this process's part of the batch, on the host
            picture = prediction_picture(
                model, jax.device_get(state.variables()), _local_part(first_eval_batch),
                config.dataset.num_classes, config.dataset.ignore_index,
                colours=spec(config.dataset.name).class_colours(config.dataset.num_classes),
                **normalisation)
            viz.save_png(workdir / "predictions.png", picture)
            logger.image(config.num_steps, "eval/predictions", picture)
            logger.message(f"checkpoints in {ckpts.directory}; predictions (image | ground truth "
                           f"| prediction) in {workdir / 'predictions.png'}")
        return {**result, "classes": names}
    finally:
        ckpts.close()
        if logger is not None:
            logger.close()


def _local_part(batch: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    """The rows of a global batch that live on this process's devices, in order."""
    def local(a: jax.Array) -> np.ndarray:
        shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
        rows, seen = [], set()
        for shard in shards:  # replicated shards of the same rows appear once
            if shard.index[0].start not in seen:
                seen.add(shard.index[0].start)
                rows.append(np.asarray(shard.data))
        return np.concatenate(rows)

    return {k: local(v) for k, v in batch.items()}


def _check_finite(step: int, metrics: Mapping[str, jax.Array]) -> None:
    """Raise :class:`NonFiniteLossError` if step ``step`` had a non-finite loss or produced
    non-finite parameters (a non-finite ``update_norm``)."""
    loss, update = (float(v) for v in jax.device_get((metrics["loss"], metrics["update_norm"])))
    if not (math.isfinite(loss) and math.isfinite(update)):
        what = f"the loss is {loss}" if not math.isfinite(loss) else \
            f"the parameter update is {update} (the loss was {loss})"
        raise NonFiniteLossError(
            f"{what} at step {step}; training stopped and no checkpoint of this or "
            f"a later step was written (the last good one is kept). Lower the learning rate, "
            f"set optimizer.clip_norm, or check the data."
        )
