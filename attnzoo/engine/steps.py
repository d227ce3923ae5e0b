"""The jitted, sharded train and eval steps, and evaluation over a dataset."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from attnzoo import inference, losses, metrics, ops
from attnzoo.engine.state import DTYPES, TrainState, loss_terms, state_shardings
from attnzoo.sharding import FSDP_AXIS, batch_sharding, replicated

Array = jax.Array


def rows_split(mesh: Mesh, batch_size: int) -> contextlib.AbstractContextManager:
    """While a model's apply is traced: every Flax module's output arrays that lead with the
    batch (``batch_size`` rows) are constrained to be split by rows over the mesh, as the batch
    is. With parameters split along ``fsdp`` (the mesh's ``fsdp`` > 1), XLA's propagation may
    otherwise lay a layer's activations out by the parameter's split axis, whole batch on each
    device, and inside a scanned stack it does: ViT-L SETR-PUP scanned with remat, ``fsdp=8``,
    needs 4.0 GiB per device at 2 images with this and 9.9 GiB without
    (``docs/benchmarks.md#big-models-remat``). Layout only: the values are the same. A no-op
    without ``fsdp``."""
    if mesh.shape.get(FSDP_AXIS, 1) == 1:
        return contextlib.nullcontext()
    rows = batch_sharding(mesh)

    def split(y: Any) -> Any:
        if isinstance(y, jax.Array) and y.ndim and y.shape[0] == batch_size:
            return jax.lax.with_sharding_constraint(y, rows)
        return y

    def interceptor(next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        return jax.tree.map(split, out) if context.method_name == "__call__" else out

    return nn.intercept_methods(interceptor)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: Mapping[str, Any], mesh: Mesh
                    ) -> Callable[[TrainState, dict[str, Array]], tuple[TrainState, dict[str, Array]]]:
    """``(state, batch) -> (state, metrics)``, jitted: the batch split over the mesh, the state
    read where it lies and the new one laid out as :func:`attnzoo.engine.state.state_shardings`
    says (replicated, or split along ``fsdp``: XLA gathers each parameter where it is used and
    sums its gradient back into the parts; with ``fsdp`` the activations stay split by rows,
    :func:`rows_split`); BatchNorm statistics are those of the global batch. Metrics:
    ``loss``, each loss term, ``grad_norm``, ``update_norm`` (of the parameter change:
    non-finite means the new parameters are), ``lr``."""
    terms = loss_terms(model, config)
    ignore_index = int(config["dataset"]["ignore_index"])
    dtype = DTYPES[config["compute_dtype"]]
    k = int(config["optimizer"]["accumulate_steps"])

    @ops.conv_implementation(config["conv_implementation"])
    def step_fn(state: TrainState, batch: dict[str, Array]) -> tuple[TrainState, dict[str, Array]]:
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params: Any) -> tuple[Array, tuple[dict[str, Array], Any]]:
            with rows_split(mesh, batch["image"].shape[0]):
                outputs, updates = model.apply(
                    {"params": params, "batch_stats": state.batch_stats},
                    batch["image"].astype(dtype), train=True, mutable=["batch_stats"],
                    rngs={"dropout": dropout_key})
            outputs = jax.tree.map(lambda v: v.astype(jnp.float32), outputs)
            loss, parts = losses.combined_loss(outputs, batch["label"], terms,
                                               ignore_index=ignore_index,
                                               key=jax.random.fold_in(dropout_key, 1))
            return loss, (parts, updates.get("batch_stats", state.batch_stats))

        (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads),
               "update_norm": optax.tree.norm(updates), "lr": schedule(state.step // k)}
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
        return jax.lax.with_sharding_constraint(new, state_shardings(new, mesh, config)), out

    return jax.jit(step_fn, in_shardings=(None, batch_sharding(mesh)),
                   out_shardings=(None, replicated(mesh)), donate_argnums=0)


def make_eval_step(model: nn.Module, config: Mapping[str, Any], mesh: Mesh, *,
                   mode: str | None = None, scales: Any = None, flip: bool | None = None,
                   crf: Mapping[str, Any] | None = None
                   ) -> Callable[[dict[str, Any], dict[str, Array]], Array]:
    """``(variables, batch) -> confusion matrix`` of the batch, jitted over ``mesh`` (the
    variables read where they lie: replicated or split along ``fsdp``), with the
    inference mode of ``config.eval`` (arguments override it). A batch with ``label_size``
    (``dataset.eval_label_canvas``) is scored at each label's original size: the logits
    (single scale) or averaged probabilities (TTA) resized back per image, as mmseg. ``crf``
    (keyword arguments of :func:`attnzoo.ops.dense_crf`, ``{}`` for DeepLab's) refines the
    scores on the input image (the batch's images mapped back to RGB 0-255) first."""
    e = config["eval"]
    num_classes = int(config["dataset"]["num_classes"])
    ignore_index = int(config["dataset"]["ignore_index"])
    dtype = DTYPES[config["compute_dtype"]]
    mode = e["mode"] if mode is None else mode
    scales = tuple(e["scales"]) if scales is None else tuple(scales)
    flip = bool(e["flip"]) if flip is None else flip

    crop, stride = tuple(e["crop_size"]), tuple(e["stride"])
    align_corners = bool(config["model"]["align_corners"])
    mean, std = (tuple(config["model"][k]) for k in ("pixel_mean", "pixel_std"))

    @ops.conv_implementation(config["conv_implementation"])
    def step_fn(variables: dict[str, Any], batch: dict[str, Array]) -> Array:
        def fn(images: Array) -> Array:
            return model.apply(variables, images.astype(dtype))["out"].astype(jnp.float32)

        original = "label_size" in batch  # labels at their original size (as mmseg)
        scores = inference.protocol_scores(
            fn, batch["image"], mode=mode, crop_size=crop, stride=stride, scales=scales,
            flip=flip, logits_if_single=original, crf=crf, pixel_mean=mean, pixel_std=std)
        predicted = inference.labels_at_original_size(
            scores, batch["size"], batch["label_size"], batch["label"].shape[1:3],
            align_corners=align_corners) if original else scores.argmax(-1)
        return metrics.confusion_matrix(predicted, batch["label"], num_classes, ignore_index)

    return jax.jit(step_fn, in_shardings=(None, batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


def evaluate(eval_step: Callable[[dict[str, Any], dict[str, Array]], Array], variables: Any,
             batches: Any) -> dict[str, Any]:
    """Sum the confusion matrices of ``batches`` and compute the metrics (see
    :func:`attnzoo.metrics.segmentation_metrics`)."""
    total = None
    for batch in batches:
        cm = eval_step(variables, batch)
        total = cm if total is None else total + cm
    if total is None:
        raise ValueError("evaluation got no batches")
    return metrics.segmentation_metrics(np.asarray(jax.device_get(total)))
