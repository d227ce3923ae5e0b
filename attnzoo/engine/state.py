"""Train state, model construction from a config, and the jitted, sharded train / eval steps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from attnzoo import inference, losses, metrics, models
from attnzoo._checks import check_choice

Array = jax.Array
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: ``step``, ``params`` (float32),
    ``batch_stats``, ``opt_state`` and ``rng`` (raw ``uint32`` key data, so
    that checkpoints hold plain arrays). Dropout keys are
    ``fold_in(rng, step)``: a resumed run draws the same ones."""

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Array

    def variables(self) -> dict[str, Any]:
        """``{"params", "batch_stats"}`` for ``model.apply``."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_mesh(devices: Any = None) -> Mesh:
    """A 1-D ``("data",)`` mesh over all devices (of every process)."""
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The segmentor ``config.model`` names, computing in ``config.compute_dtype``."""
    check_choice(config["compute_dtype"], tuple(DTYPES), "compute_dtype")
    m = config["model"]
    kwargs = dict(num_classes=int(config["dataset"]["num_classes"]),
                  dtype=DTYPES[config["compute_dtype"]])
    if not m["name"].startswith("attention_unet"):
        kwargs.update(backbone_kwargs=dict(m["backbone_kwargs"]), head_kwargs=dict(m["head_kwargs"]),
                      memory_efficient=bool(m["memory_efficient"]),
                      head_channels=m.get("head_channels"), aux_channels=m.get("aux_channels"))
    return models.create(m["name"], **kwargs)


def loss_terms(model: nn.Module, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The model's weighted outputs with the configured loss on each."""
    check_choice(config["loss"]["name"], tuple(losses.LOSSES), "loss.name")
    extra = dict(config["loss"]["kwargs"])
    return [{**t, "loss": config["loss"]["name"], **extra} for t in model.loss_terms()]


def _init(model: nn.Module, tx: optax.GradientTransformation, config: Mapping[str, Any]
          ) -> TrainState:
    crop = tuple(config["dataset"]["crop_size"])
    init_key, state_key = jax.random.split(jax.random.key(int(config["seed"])))
    variables = model.init({"params": init_key, "dropout": init_key},
                           jnp.zeros((1, *crop, 3), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      rng=jax.random.key_data(state_key))


def init_state(model: nn.Module, tx: optax.GradientTransformation, config: Mapping[str, Any],
               mesh: Mesh) -> TrainState:
    """Fresh parameters from ``config.seed``, replicated over ``mesh``.

    Drawn with the non-partitionable threefry: the values are replicated anyway, and
    XLA:CPU compiles it 2-3x faster (seconds per run) than the partitionable one."""
    with jax.threefry_partitionable(False):
        return jax.jit(lambda: _init(model, tx, config), out_shardings=replicated(mesh))()


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, config: Mapping[str, Any],
                   mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of :func:`init_state`'s result, uncomputed."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        jax.eval_shape(lambda: _init(model, tx, config)))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: Mapping[str, Any], mesh: Mesh
                    ) -> Callable[[TrainState, dict[str, Array]], tuple[TrainState, dict[str, Array]]]:
    """``(state, batch) -> (state, metrics)``, jitted: batch sharded over ``data``, state
    replicated (BatchNorm statistics are those of the global batch). Metrics: ``loss``,
    each loss term, ``grad_norm``, ``update_norm`` (of the parameter change: non-finite
    means the new parameters are), ``lr``."""
    terms = loss_terms(model, config)
    ignore_index = int(config["dataset"]["ignore_index"])
    dtype = DTYPES[config["compute_dtype"]]
    k = int(config["optimizer"]["accumulate_steps"])

    def step_fn(state: TrainState, batch: dict[str, Array]) -> tuple[TrainState, dict[str, Array]]:
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params: Any) -> tuple[Array, tuple[dict[str, Array], Any]]:
            outputs, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["image"].astype(dtype),
                train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key})
            outputs = {name: v.astype(jnp.float32) for name, v in outputs.items()}
            loss, parts = losses.combined_loss(outputs, batch["label"], terms,
                                               ignore_index=ignore_index)
            return loss, (parts, updates.get("batch_stats", state.batch_stats))

        (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads),
               "update_norm": optax.tree.norm(updates), "lr": schedule(state.step // k)}
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), out

    return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def make_eval_step(model: nn.Module, config: Mapping[str, Any], mesh: Mesh, *,
                   mode: str | None = None, scales: Any = None, flip: bool | None = None
                   ) -> Callable[[dict[str, Any], dict[str, Array]], Array]:
    """``(variables, batch) -> confusion matrix`` of the batch, jitted over ``mesh``, with the
    inference mode of ``config.eval`` (arguments override it)."""
    e = config["eval"]
    num_classes = int(config["dataset"]["num_classes"])
    ignore_index = int(config["dataset"]["ignore_index"])
    dtype = DTYPES[config["compute_dtype"]]
    mode = e["mode"] if mode is None else mode
    scales = tuple(e["scales"]) if scales is None else tuple(scales)
    flip = bool(e["flip"]) if flip is None else flip

    def step_fn(variables: dict[str, Any], batch: dict[str, Array]) -> Array:
        def fn(images: Array) -> Array:
            return model.apply(variables, images.astype(dtype))["out"].astype(jnp.float32)

        probs = inference.inference(fn, batch["image"], mode=mode, crop_size=tuple(e["crop_size"]),
                                    stride=tuple(e["stride"]), scales=scales, flip=flip)
        return metrics.confusion_matrix(probs.argmax(-1), batch["label"], num_classes, ignore_index)

    return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharding(mesh)),
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
