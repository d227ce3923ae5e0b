"""The block registry: ``create("cbam", channels=256)``, ``list_blocks()``.

Names follow timm where timm has the block and the papers' short names
otherwise. Each entry also knows how to make example inputs for a module
(used to initialise variables, e.g. by the weight converter) and how the
reference PyTorch implementation names its parameters, where it differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._registry import Registry

Array = jax.Array


def image_example(module: nn.Module, size: tuple[int, int] = (8, 8)) -> tuple[Array, ...]:
    """One ``(1, h, w, channels)`` input of ``size``, the common case (or of the size a block
    is built for)."""
    h, w = getattr(module, "relative_position", None) or size
    return (jnp.zeros((1, h, w, module.channels), jnp.float32),)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """A registered block.

    Attributes:
      name: its registry name.
      factory: the module class (or a function returning a module).
      example: ``example(module, size=(h, w))``, the arguments of a call on a ``h x w`` map.
      torch_renames: reference-key prefix -> attnzoo path prefix (dotted), applied before the
        generic mapping of the converter.
      paper: the paper, short (``"Hu et al. 2018"``).
      follows: the implementation it follows and ports parameter names from.
      tested: what it is tested against.
    """

    name: str
    factory: Callable[..., nn.Module]
    example: Callable[..., tuple[Any, ...]] = image_example
    torch_renames: tuple[tuple[str, str], ...] = ()
    paper: str = ""
    follows: str = ""
    tested: str = ""


_BLOCKS: Registry[BlockSpec] = Registry("block")


def register(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    example: Callable[..., tuple[Any, ...]] = image_example,
    torch_renames: dict[str, str] | None = None,
    paper: str = "",
    follows: str = "",
    tested: str = "",
) -> None:
    """Register ``factory`` (a module class or a function returning a module) as ``name``,
    with the fields of :class:`BlockSpec` (the generated block table shows the last three)."""
    _BLOCKS.add(name, BlockSpec(name, factory, example, tuple((torch_renames or {}).items()),
                                paper, follows, tested))


def registered(name: str, **kwargs: Any) -> Callable[[type], type]:
    """Class decorator form of :func:`register`."""

    def wrap(cls: type) -> type:
        register(name, cls, **kwargs)
        return cls

    return wrap


def get_spec(name: str) -> BlockSpec:
    """The registry entry for ``name``; ValueError listing the names if unknown."""
    return _BLOCKS.get(name)


def create(name: str, /, **kwargs: Any) -> nn.Module:
    """Build the block registered as ``name`` with ``kwargs`` (e.g. ``channels=256``).

    ``name`` is positional-only, so Flax's own ``name=`` may be passed in ``kwargs``.
    """
    return get_spec(name).factory(**kwargs)


def list_blocks() -> list[str]:
    """All registered block names, sorted."""
    return _BLOCKS.names()
