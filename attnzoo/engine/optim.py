"""Optimisers and learning-rate schedules of the reference recipes (optax)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

from attnzoo._checks import check_choice, check_positive
from attnzoo.engine.config import check_domain


def learning_rate_schedule(config: Mapping[str, Any], num_updates: int) -> optax.Schedule:
    """The learning rate at each update, in up to three phases (warm-up, stable, decay, as the
    WSD schedule): a linear warm-up from 0 over ``warmup_steps`` updates, the peak ``lr``
    held until the decay starts, then the decay over the last ``T = round(decay_ratio N)`` of
    the ``N`` updates (all of those after the warm-up when it would overlap it): ``poly``
    (mmsegmentation's PolyLR) ``(lr - min_lr) (1 - t/T)^power + min_lr``; ``cosine``
    ``min_lr + (lr - min_lr) (1 + cos(pi t/T)) / 2``; ``constant``. ``decay_ratio`` 1 (the
    default) decays from the end of the warm-up; being a fraction, it gives the same shape of
    schedule whatever ``num_steps`` a run overrides.

    Raises:
      ValueError naming ``optimizer.schedule``, ``num_steps``, ``optimizer.warmup_steps`` or
      ``optimizer.decay_ratio`` when out of range.
    """
    check_choice(config["schedule"], ("poly", "cosine", "constant"), "optimizer.schedule")
    check_positive(num_updates, "num_steps")
    lr, min_lr = float(config["learning_rate"]), float(config["min_lr"])
    warmup, ratio = config["warmup_steps"], config.get("decay_ratio", 1.0)
    check_domain("optimizer.warmup_steps", warmup)
    check_domain("optimizer.decay_ratio", ratio)
    decay_start = max(warmup, num_updates - round(ratio * num_updates))
    decay_steps = max(num_updates - decay_start, 1)
    if config["schedule"] == "poly":
        main = optax.polynomial_schedule(lr, min_lr, float(config["power"]), decay_steps)
    elif config["schedule"] == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=min_lr / lr if lr else 0.0)
    else:
        main = optax.constant_schedule(lr)
    phases, starts = [], []
    if warmup > 0:
        phases.append(optax.linear_schedule(0.0, lr, warmup))
        starts.append(warmup)
    if decay_start > warmup:
        phases.append(optax.constant_schedule(lr))
        starts.append(decay_start)
    if not phases:
        return main
    return optax.join_schedules([*phases, main], starts)


# parameters of more than one dimension that get no weight decay: position embeddings, tokens
# and relative position bias tables (mmseg's Swin / ViT recipes: decay_mult 0 for them)
NO_DECAY = ("pos_embed", "cls_token", "relative_position_bias_table")


def decay_mask(params: Any) -> Any:
    """True for the weights that get weight decay: conv and dense kernels. Biases,
    normalisation scales and the attention gammas (all 1-D) get none, nor do the embeddings
    :data:`NO_DECAY` names."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p.ndim > 1 and getattr(path[-1], "key", None) not in NO_DECAY, params)


def lr_multipliers(multipliers: Mapping[str, float]) -> optax.GradientTransformation:
    """Scale the updates of the parameters under each named top-level module (``"head"``,
    ``"backbone"``) by its multiplier: the same as a PyTorch parameter group of learning rate
    ``lr * multiplier`` (weight decay included), as mmseg's ``paramwise_cfg`` ``lr_mult``.

    Raises:
      ValueError (at the first update) naming a module the parameters do not have.
    """
    for name, mult in multipliers.items():
        if float(mult) < 0:
            raise ValueError(f"optimizer.lr_mult[{name!r}] must be >= 0; got {mult}")

    def scale(updates: Any, params: Any = None) -> Any:
        del params
        unknown = sorted(set(multipliers) - set(updates))
        if unknown:
            raise ValueError(f"optimizer.lr_mult names {unknown}, not modules of the model; "
                             f"its modules are {sorted(updates)}")
        return {k: jax.tree.map(lambda u, m=float(multipliers.get(k, 1.0)): u * m, v)
                for k, v in updates.items()}

    return optax.stateless(scale)


def make_optimizer(config: Mapping[str, Any], num_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)`` for ``config.optimizer``: gradient clipping by global norm
    (``clip_norm`` > 0), then SGD + momentum with coupled weight decay (PyTorch's
    ``SGD(weight_decay=...)``) or AdamW (decoupled); ``accumulate_steps`` > 1 wraps it in
    ``optax.MultiSteps`` (one update every k calls; the schedule counts updates);
    ``lr_mult`` scales the learning rate of named modules (:func:`lr_multipliers`)."""
    check_choice(config["name"], ("sgd", "adamw"), "optimizer.name")
    k = int(config["accumulate_steps"])
    check_positive(k, "optimizer.accumulate_steps")
    schedule = learning_rate_schedule(config, max(num_steps // k, 1))
    wd = float(config["weight_decay"])
    parts = []
    if float(config["clip_norm"]) > 0:
        parts.append(optax.clip_by_global_norm(float(config["clip_norm"])))
    if config["name"] == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
        parts.append(optax.sgd(schedule, momentum=float(config["momentum"]) or None,
                               nesterov=bool(config["nesterov"])))
    else:
        parts.append(optax.adamw(schedule, b1=float(config["b1"]), b2=float(config["b2"]),
                                 weight_decay=wd, mask=decay_mask))
    if config.get("lr_mult"):
        parts.append(lr_multipliers(dict(config["lr_mult"])))
    tx = optax.chain(*parts)
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k)
    return tx, schedule
