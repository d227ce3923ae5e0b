"""The model registry: names -> descriptions (:mod:`attnzoo.models.specs`)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_fields
from attnzoo._registry import Registry
from attnzoo.models.specs import EncoderDecoderSpec, ModelSpec, UNetSpec


def _check_model(name: str, spec: ModelSpec) -> None:
    if not isinstance(spec, (EncoderDecoderSpec, UNetSpec)):
        raise ValueError(f"model {name!r}: a model is registered as an EncoderDecoderSpec "
                         f"(registered backbone and heads) or a UNetSpec; got "
                         f"{type(spec).__name__} (see help(attnzoo.models.register))")


MODELS: Registry[ModelSpec] = Registry("model", check=_check_model,
                                       describe=lambda spec: spec.summary())


def register(name: str, spec: ModelSpec) -> ModelSpec:
    """Register the description ``spec`` as model ``name``.

    The contract, checked here and when the description is made (ValueError saying what is
    wrong): an :class:`~attnzoo.models.EncoderDecoderSpec` naming a registered backbone,
    head, auxiliary head and neck, each of its ``*_kwargs`` fields of that part; or a
    :class:`~attnzoo.models.UNetSpec`.
    """
    return MODELS.add(name, spec)


def get_spec(name: str) -> ModelSpec:
    """The description registered as ``name``; ValueError listing the names if unknown."""
    return MODELS.get(name)


def create(name: str, /, *, num_classes: int, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name`` with ``num_classes`` classes.

    ``overrides`` go to the description's ``build`` (for encoder-decoders:
    ``backbone_kwargs``, ``head_kwargs``, ``head_channels``, ``aux_channels``,
    ``memory_efficient``, ``dtype``; see :class:`~attnzoo.models.specs.EncoderDecoderSpec`).
    ValueError naming an override the model does not take (and the nearest it does).
    """
    spec = get_spec(name)
    check_fields(overrides, spec.options(), f"model {name!r} ({spec.summary()})")
    return spec.build(num_classes=num_classes, **overrides)


def list_models(pattern: str = "*", *, describe: bool = False) -> list[str] | dict[str, str]:
    """The registered model names matching ``pattern`` (shell-style, ``"danet_*"``, as timm's
    ``list_models``), sorted; with ``describe``, a dict name -> its head and backbone."""
    return MODELS.listing(pattern, describe)


def parameter_counts(model: nn.Module, image_size: tuple[int, int] = (64, 64)) -> tuple[int, int]:
    """``(all, inference)``: the trainable parameters of ``model`` (BatchNorm statistics
    excluded), and those its inference (``model.apply(variables, images)["out"]``) reads: all
    but the training-only branches (the auxiliary head, DANet's branch classifiers). Found by
    tracing, nothing computed."""
    x = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda v, images: model.apply(v, images)["out"])(variables, x).jaxpr
    read = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    params = [(math.prod(leaf.shape), var) for (path, leaf), var in zip(leaves, jaxpr.invars)
              if path[0].key == "params"]
    return sum(n for n, _ in params), sum(n for n, var in params if id(var) in read)
