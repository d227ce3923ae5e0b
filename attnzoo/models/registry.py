"""The model registry: names -> descriptions (:mod:`attnzoo.models.specs`)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from attnzoo._registry import Registry
from attnzoo.models.specs import ModelSpec

MODELS: Registry[ModelSpec] = Registry("model")


def register(name: str, spec: ModelSpec) -> ModelSpec:
    """Register the description ``spec`` as model ``name``."""
    return MODELS.add(name, spec)


def get_spec(name: str) -> ModelSpec:
    """The description registered as ``name``; ValueError listing the names if unknown."""
    return MODELS.get(name)


def create(name: str, /, *, num_classes: int, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name`` with ``num_classes`` classes.

    ``overrides`` go to the description's ``build`` (for encoder-decoders:
    ``backbone_kwargs``, ``head_kwargs``, ``head_channels``, ``aux_channels``,
    ``memory_efficient``, ``dtype``; see :class:`~attnzoo.models.specs.EncoderDecoderSpec`).
    """
    return get_spec(name).build(num_classes=num_classes, **overrides)


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return MODELS.names()
