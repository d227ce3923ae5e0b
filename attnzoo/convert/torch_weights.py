"""PyTorch state dicts -> Flax variables, by name, for any attnzoo module.

attnzoo names its submodules as the reference PyTorch code does (``fc1``,
``conv.bn``, ``paths_0`` for ``paths.0``), so one mapping serves every block:

* ``<prefix>.weight`` -> ``params/<prefix>/kernel`` (conv ``OIHW -> HWIO``,
  conv1d ``OIK -> KIO``, linear ``OI -> IO``; a linear layer fills a 1x1 conv
  kernel and a 1x1 conv a dense kernel) or ``.../scale`` for norms;
* ``<prefix>.bias`` -> ``params/<prefix>/bias``;
* ``running_mean`` / ``running_var`` -> ``batch_stats/<prefix>/mean`` / ``var``;
* anything else (``gamma``, bias tables) -> ``params/<prefix>/<name>``;
* a weight, bias or buffer the module keeps as state rather than parameters (EMANet's bases
  and frozen projection) -> the same path under ``batch_stats``.

The target tree is the module's own (from ``jax.eval_shape`` of its init),
so every missing, unexpected and mis-shaped key is found and reported.
PyTorch itself is not imported: tensors are read through ``.numpy()``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np

from attnzoo._checks import mismatch_report

# buffers that are counters or constants derived from the architecture (a window's relative
# position index): nothing to convert
_SKIPPED = ("num_batches_tracked", "relative_position_index")


class ConversionError(ValueError):
    """Raised when a state dict does not fit the target module exactly."""


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like as numpy."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _module_path(dotted: str) -> tuple[str, ...]:
    """``paths.0.conv`` -> ``("paths_0", "conv")`` (Flax's names for list members)."""
    parts: list[str] = []
    for part in dotted.split(".") if dotted else []:
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    return tuple(parts)


def _candidates(key: str) -> list[tuple[str, ...]]:
    prefix, _, leaf = key.rpartition(".")
    mod = _module_path(prefix)
    if leaf == "weight":
        return [("params", *mod, "kernel"), ("params", *mod, "scale"),
                ("batch_stats", *mod, "kernel")]
    if leaf == "running_mean":
        return [("batch_stats", *mod, "mean")]
    if leaf == "running_var":
        return [("batch_stats", *mod, "var")]
    return [("params", *mod, leaf), ("batch_stats", *mod, leaf)]


def _transform(array: np.ndarray, target_path: tuple[str, ...]) -> np.ndarray:
    if target_path[-1] == "kernel":
        if array.ndim == 4:  # conv OIHW -> HWIO
            return array.transpose(2, 3, 1, 0)
        if array.ndim == 3:  # conv1d OIK -> KIO
            return array.transpose(2, 1, 0)
        if array.ndim == 2:  # linear OI -> IO
            return array.T
    return array


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A kernel shape without its leading unit axes (a 1x1 conv's ``(1, 1, I, O)`` is ``(I, O)``)."""
    shape = tuple(shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def apply_renames(
    state_dict: Mapping[str, Any], renames: Iterable[tuple[str, str]] = (),
    regex_renames: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Replace key prefixes (``old.`` -> ``new.``, or a whole key) in ``state_dict``, then
    apply each ``(pattern, replacement)`` of ``regex_renames`` (``re.sub``) to every key."""
    renames = tuple(renames)
    compiled = [(re.compile(pattern), repl) for pattern, repl in regex_renames]
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        for old, new in renames:
            if key == old or key.startswith(old + "."):
                key = new + key[len(old):]
                break
        for pattern, repl in compiled:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def target_shapes(module: nn.Module, *example_args: Any, **example_kwargs: Any) -> dict:
    """The module's variable tree as ``ShapeDtypeStruct``s (nothing is computed)."""
    return jax.eval_shape(
        lambda: module.init(jax.random.key(0), *example_args, **example_kwargs)
    )


def convert_state_dict(
    state_dict: Mapping[str, Any],
    target: Mapping[str, Any],
    *,
    renames: Iterable[tuple[str, str]] = (),
    regex_renames: Iterable[tuple[str, str]] = (),
    strict_regex: str | None = None,
) -> dict[str, Any]:
    """Map ``state_dict`` onto the variable tree ``target`` (shapes), exactly.

    Args:
      state_dict: reference key -> tensor/array.
      target: the module's variables or their shapes (:func:`target_shapes`).
      renames: ``(reference_prefix, attnzoo_prefix)`` pairs applied first.
      regex_renames: ``(pattern, replacement)`` pairs applied to every key next.
      strict_regex: if given, only reference keys matching it are converted
        (others are ignored, e.g. a classifier head); all target leaves must
        still be filled.

    Returns:
      Variables with the structure and dtypes of ``target``.

    Raises:
      ConversionError listing missing, unexpected and mis-shaped keys.
    """
    flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
    pattern = re.compile(strict_regex) if strict_regex else None
    filled: dict[tuple[str, ...], np.ndarray] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    renamed = apply_renames(state_dict, renames, regex_renames)
    for original, (key, value) in zip(state_dict, renamed.items()):  # errors name the original
        if key.rsplit(".", 1)[-1] in _SKIPPED or (pattern and not pattern.search(key)):
            continue
        path = next((p for p in _candidates(key) if p in flat_target), None)
        if path is None:
            unexpected.append(original)
            continue
        array = _transform(to_numpy(value), path)
        want = flat_target[path]
        if array.shape != tuple(want.shape):
            if array.size == int(np.prod(want.shape)) and (
                    path[-1] != "kernel" or _squeezed(array.shape) == _squeezed(want.shape)):
                # a (1,) gamma stored as (); a linear layer as a 1x1 conv kernel or back
                array = array.reshape(want.shape)
            else:
                mismatched.append(
                    f"{original}: {tuple(to_numpy(value).shape)} -> {'/'.join(path)} wants "
                    f"{tuple(want.shape)}"
                )
                continue
        if path in filled:
            mismatched.append(f"{original}: fills {'/'.join(path)} a second time")
            continue
        filled[path] = array.astype(want.dtype)
    missing = ["/".join(p) for p in flat_target if p not in filled]
    report = mismatch_report(missing, unexpected, mismatched)
    if report:
        raise ConversionError("state dict does not fit the module; " + report)
    return flax.traverse_util.unflatten_dict({k: jax.numpy.asarray(v) for k, v in filled.items()})
