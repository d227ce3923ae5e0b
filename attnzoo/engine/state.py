"""The train state and what it is built from: the model a config names, its loss terms, fresh
(or abstract) parameters laid out on the mesh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from attnzoo import losses, models
from attnzoo._checks import check_choice
from attnzoo.pixels import IMAGENET_MEAN, IMAGENET_STD
from attnzoo.sharding import replicated, tree_shardings

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


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The segmentor ``config.model`` names, computing in ``config.compute_dtype``.

    The model fields that are set (non-empty ``backbone_kwargs`` / ``head_kwargs`` /
    ``aux_kwargs``,
    ``head_channels`` / ``aux_channels`` not None, ``memory_efficient`` / ``align_corners``
    true, ``crf`` true with its ``crf_kwargs``, ``remat`` policies set, ``scan_layers``, ``pixel_mean`` / ``pixel_std`` other than
    ImageNet's) go to ``models.create`` as overrides; a model they do not apply to refuses
    them. ``config`` is a current one (:func:`attnzoo.engine.config.migrate`)."""
    check_choice(config["compute_dtype"], tuple(DTYPES), "compute_dtype")
    m = config["model"]
    normalisation = {k: tuple(m[k]) for k in ("pixel_mean", "pixel_std")}
    overrides = {
        "backbone_kwargs": dict(m["backbone_kwargs"]), "head_kwargs": dict(m["head_kwargs"]),
        "aux_kwargs": dict(m["aux_kwargs"]),
        "head_channels": m["head_channels"], "aux_channels": m["aux_channels"],
        "memory_efficient": bool(m["memory_efficient"]), "align_corners": bool(m["align_corners"]),
        "crf": dict(m["crf_kwargs"]) if m["crf"] else None,
        "remat": {kind: policy for kind, policy in m["remat"].items() if policy is not None},
        "scan_layers": bool(m["scan_layers"]),
        **({} if normalisation == {"pixel_mean": IMAGENET_MEAN, "pixel_std": IMAGENET_STD}
           else normalisation),
    }
    return models.create(m["name"], num_classes=int(config["dataset"]["num_classes"]),
                         dtype=DTYPES[config["compute_dtype"]],
                         **{k: v for k, v in overrides.items()
                            if not (v is None or v is False or v == {})})


def loss_terms(model: nn.Module, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The model's weighted outputs, the configured pixel loss (``config.loss``) on each of its
    pixel terms; an image-level term a head declares (EncNet's SE-loss) keeps its own."""
    check_choice(config["loss"]["name"], losses.PIXEL_LOSSES, "loss.name")
    extra = dict(config["loss"]["kwargs"])
    return [{**t, "loss": config["loss"]["name"], **extra}
            if t.get("loss", "cross_entropy") == "cross_entropy" else dict(t)
            for t in model.loss_terms()]


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


def layout(tree: Any, mesh: Mesh, config: Mapping[str, Any], prefix: str = "") -> Any:
    """Where each array of ``tree`` (arrays or shapes; its paths start with ``prefix``, e.g.
    ``"params/"``) lives on ``mesh``: :func:`attnzoo.sharding.array_spec` with ``config.mesh``'s
    rules and threshold (split along ``fsdp`` when the mesh has it)."""
    m = config["mesh"]
    rules = tuple((pattern, tuple(spec)) for pattern, spec in m["rules"])
    return tree_shardings(tree, mesh, rules, int(m["min_shard_size"]), prefix=prefix)


def state_shardings(state: TrainState, mesh: Mesh, config: Mapping[str, Any]) -> TrainState:
    """Where each array of ``state`` (arrays or shapes) lives on ``mesh``: ``step`` and ``rng``
    replicated; parameters, BatchNorm statistics and optimizer state by :func:`layout`."""
    return TrainState(
        step=replicated(mesh), rng=replicated(mesh),
        **{name: layout(getattr(state, name), mesh, config, f"{name}/")
           for name in ("params", "batch_stats", "opt_state")})


def init_state(model: nn.Module, tx: optax.GradientTransformation, config: Mapping[str, Any],
               mesh: Mesh) -> TrainState:
    """Fresh parameters from ``config.seed``, laid out on ``mesh`` (:func:`state_shardings`).

    Drawn with the non-partitionable threefry: the same values on any mesh, and XLA:CPU
    compiles it 2-3x faster (seconds per run) than the partitionable one."""
    def build() -> TrainState:
        state = _init(model, tx, config)
        return jax.lax.with_sharding_constraint(state, state_shardings(state, mesh, config))

    with jax.threefry_partitionable(False):
        return jax.jit(build)()


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, config: Mapping[str, Any],
                   mesh: Mesh) -> TrainState:
    """Shapes, dtypes and shardings (:func:`state_shardings`) of :func:`init_state`'s result,
    uncomputed."""
    shapes = jax.eval_shape(lambda: _init(model, tx, config))
    return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                 sharding=sharding),
                        shapes, state_shardings(shapes, mesh, config))
