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

from attnzoo._checks import check_fields, module_fields
from attnzoo._registry import Registry, check_module_contract, doc_summary

Array = jax.Array


def image_example(module: nn.Module, size: tuple[int, int] = (8, 8)) -> tuple[Array, ...]:
    """One ``(1, h, w, channels)`` input of ``size``, the common case (or of the size a block
    is built for)."""
    h, w = getattr(module, "relative_position", None) or size
    return (jnp.zeros((1, h, w, module.channels), jnp.float32),)


CONTRACT_SIZE = 8  # the size field's value, and the map's side, of the registration check


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """A registered block.

    Attributes:
      name: its registry name.
      factory: the module class.
      example: ``example(module, size=(h, w))``, the arguments of a call on a ``h x w`` map.
      torch_renames: reference-key prefix -> attnzoo path prefix (dotted), applied before the
        generic mapping of the converter.
      paper: the paper, short (``"Hu et al. 2018"``).
      follows: the implementation it follows and ports parameter names from.
      tested: what it is tested against.
      size_field: the field it is sized by (``channels``; the CRF's ``num_classes``).
    """

    name: str
    factory: type[nn.Module]
    example: Callable[..., tuple[Any, ...]] = image_example
    torch_renames: tuple[tuple[str, str], ...] = ()
    paper: str = ""
    follows: str = ""
    tested: str = ""
    size_field: str = "channels"


def _check_block(name: str, spec: BlockSpec) -> None:
    """The contract :func:`register` states; the example is traced (shapes only) for blocks
    defined outside attnzoo (attnzoo's own run in ``tests/test_registries.py``)."""
    cls = spec.factory
    what = f"block {name!r} ({getattr(cls, '__name__', cls)})"
    fields = (spec.size_field, "dtype", "param_dtype")
    check_module_contract(what, cls, fields, "attnzoo.blocks.register")
    required = [d.name for d in dataclasses.fields(cls)
                if d.name not in (*fields, "parent", "name") and d.default is dataclasses.MISSING
                and d.default_factory is dataclasses.MISSING]
    if required:
        raise ValueError(f"{what}: its fields {required} have no default; a block is built "
                         f"from {spec.size_field} alone (create({name!r}, "
                         f"{spec.size_field}=...)), the others need defaults")
    if cls.__module__.split(".")[0] == "attnzoo":
        return
    module = cls(**{spec.size_field: CONTRACT_SIZE})
    args = spec.example(module, (CONTRACT_SIZE, CONTRACT_SIZE))
    try:
        out = jax.eval_shape(lambda: module.init_with_output(
            jax.random.key(0), *args, train=False)[0])
    except Exception as err:  # noqa: BLE001 - reported with what was tried, then re-raised
        raise ValueError(f"{what}: calling it on its example {[a.shape for a in args]} with "
                         f"{spec.size_field}={CONTRACT_SIZE}, train=False failed: "
                         f"{type(err).__name__}: {err}") from err
    first = args[0][0] if isinstance(args[0], list) else args[0]
    if getattr(out, "shape", None) != first.shape:
        raise ValueError(f"{what}: a block returns its input's shape {first.shape}; on its "
                         f"example it returned {getattr(out, 'shape', type(out).__name__)}")


def _describe_block(spec: BlockSpec) -> str:
    summary = doc_summary(spec.factory)
    return f"{summary} [{spec.paper}]" if spec.paper else summary


_BLOCKS: Registry[BlockSpec] = Registry("block", check=_check_block, describe=_describe_block)


def register(
    name: str,
    factory: type[nn.Module],
    *,
    example: Callable[..., tuple[Any, ...]] = image_example,
    torch_renames: dict[str, str] | None = None,
    paper: str = "",
    follows: str = "",
    tested: str = "",
    size_field: str = "channels",
) -> None:
    """Register the block ``factory`` as ``name``, with the fields of :class:`BlockSpec` (the
    generated block table shows ``paper``, ``follows`` and ``tested``).

    The contract, checked here (ValueError saying what is missing):

    - ``factory`` is a ``flax.linen.Module`` class with the fields ``channels`` (or the
      ``size_field`` it is sized by), ``dtype`` (of the computation) and ``param_dtype``, and a
      default for every other field: ``create(name, channels=C)`` builds it;
    - its ``__call__`` takes the keyword ``train`` (dropout, BatchNorm statistics);
    - called on ``example(module, (8, 8))`` (default: one ``(1, 8, 8, channels)`` map) it
      returns an array of the first input's shape (for blocks defined outside attnzoo this
      is traced, shapes only, when they are registered).
    """
    _BLOCKS.add(name, BlockSpec(name, factory, example, tuple((torch_renames or {}).items()),
                                paper, follows, tested, size_field))


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
    ValueError naming a keyword that is no field of the block (and the nearest field).
    """
    spec = get_spec(name)
    check_fields(kwargs, [*module_fields(spec.factory), "name"],
                 f"block {name!r} ({spec.factory.__name__})")
    return spec.factory(**kwargs)


def list_blocks(pattern: str = "*", *, describe: bool = False) -> list[str] | dict[str, str]:
    """The registered block names matching ``pattern`` (shell-style, ``"*attn*"``), sorted;
    with ``describe``, a dict name -> one line (the block and its paper)."""
    return _BLOCKS.listing(pattern, describe)
