"""Argument checks shared by every layer: bad input is refused with a message
that names the argument, what was expected and what came."""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any



def check_rank(x: Any, rank: int | Sequence[int], name: str, layout: str = "") -> None:
    """Raise ValueError unless ``x.ndim`` is ``rank`` (or one of ``rank``)."""
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    ndim = getattr(x, "ndim", None)
    if ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        hint = f" ({layout})" if layout else ""
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{name} must have rank {want}{hint}; got shape {shape}")


def check_positive(value: Any, name: str) -> None:
    """Raise ValueError unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")


def check_divisible(value: int, divisor: int, name: str, divisor_name: str) -> None:
    """Raise ValueError unless ``divisor`` divides ``value``."""
    if value % divisor:
        raise ValueError(
            f"{name}={value} must be divisible by {divisor_name}={divisor}"
        )


def check_floating(x: Any, name: str) -> None:
    """Raise ValueError unless ``x`` holds floating-point numbers (integer or boolean input
    would be computed in its own dtype and truncated)."""
    import jax.numpy as jnp  # knows bfloat16 and the other ml_dtypes floats as floating

    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        got = dtype if dtype is not None else type(x).__name__
        raise ValueError(f"{name} must be a floating-point array (float32, bfloat16, ...); got "
                         f"{got}: cast it first, e.g. {name}.astype(jnp.float32)")


def check_channels(x: Any, channels: int, name: str = "x", field: str = "channels") -> None:
    """Raise ValueError unless the last axis of ``x`` has ``channels`` entries (the module's
    ``field``); the message hints at NHWC when the channels sit on axis 1 (NCHW)."""
    if x.shape[-1] != channels:
        hint = ""
        if x.ndim == 4 and x.shape[1] == channels:
            hint = (f"; axis 1 has {channels}: attnzoo takes channels last (NHWC), transpose "
                    f"an NCHW array with {name}.transpose(0, 2, 3, 1)")
        raise ValueError(
            f"{name} has {x.shape[-1]} channels (last axis of shape {tuple(x.shape)}); "
            f"the module was built for {field}={channels}{hint}"
        )


def check_image(x: Any, channels: int, name: str = "x", field: str = "channels") -> None:
    """Raise ValueError unless ``x`` is a floating-point ``(B, H, W, channels)`` array
    (NHWC)."""
    check_rank(x, 4, name, "B, H, W, C")
    check_floating(x, name)
    check_channels(x, channels, name, field)


def check_stages(module: Any, names: Sequence[str], count: int = 4) -> None:
    """Raise ValueError unless each field of ``module`` in ``names`` gives ``count`` positive
    entries (one per stage of a backbone)."""
    for name in names:
        values = tuple(getattr(module, name))
        if len(values) != count:
            raise ValueError(f"{name} must give {count} stages; got {values}")
        for v in values:
            check_positive(v, f"{name} entries")


def check_stage_heads(widths: Sequence[int], heads: Sequence[int]) -> None:
    """Raise ValueError unless each stage's width divides by its attention heads (the
    hierarchical Transformers: MiT, Swin, Twins)."""
    for i, (width, count) in enumerate(zip(widths, heads)):
        if width % count:
            raise ValueError(f"stage {i + 1}'s width {width} must divide by its num_heads "
                             f"{count}")


def check_rate(value: float, name: str) -> None:
    """Raise ValueError unless ``value`` is a probability in [0, 1) (a dropout or stochastic
    depth rate)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {value}")


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """``" (did you mean 'x'?)"`` naming the choice closest to a misspelt string ``value``
    (:func:`difflib.get_close_matches`), or ``""`` when none is close."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(value: Any, choices: Sequence[Any], name: str) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``, suggesting the nearest."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}"
                         f"{did_you_mean(value, choices)}")


def check_fields(kwargs: Mapping[str, Any], fields: Collection[str], what: str) -> None:
    """Raise ValueError unless every keyword in ``kwargs`` is one of ``fields`` (those ``what``,
    e.g. ``"block 'se' (SqueezeExcite)"``, takes), naming the unknown ones, the nearest field to
    each and every field."""
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        hints = "".join(did_you_mean(k, fields) for k in unknown)
        raise ValueError(f"{what} has no field {', '.join(map(repr, unknown))}{hints}; its "
                         f"fields are {sorted(fields)}")


def module_fields(cls: Any) -> list[str]:
    """The fields a Flax module class (a dataclass) is built from, without Flax's ``parent``
    and ``name``."""
    if not dataclasses.is_dataclass(cls):
        return []
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def mismatch_report(missing: Sequence[str], unexpected: Sequence[str],
                    mis_shaped: Sequence[str]) -> str:
    """``"missing (2): a, b; mis-shaped (1): c ..."`` for the non-empty lists; ``""`` if all are
    empty (weights that fit)."""
    parts = [f"{title} ({len(items)}): " + ", ".join(sorted(items))
             for title, items in (("missing", missing), ("unexpected", unexpected),
                                  ("mis-shaped", mis_shaped)) if items]
    return "; ".join(parts)


def check_writable_folder(path: str | Path, name: str) -> Path:
    """``path`` as a Path if it is, or can be made, a folder this process can write in; else
    an error naming ``name`` (e.g. ``"--out"``): ValueError for a file in the way
    (``path`` or one of its parents), PermissionError for a folder that cannot be written
    (permissions, a read-only file system). Nothing is created."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, a file"
        raise ValueError(f"{name} {path} {where}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise PermissionError(f"{name} {path} cannot be written ({existing}: "
                              f"{err.strerror})") from None
    return path


def same_stems(paths: Iterable[str | Path], show: Any = str) -> list[list[str]]:
    """Groups of ``paths`` (``show(path)`` each) that share a file stem (``a.png`` and
    ``a.jpg``; ``a.png`` in two folders), in the order first seen: outputs or masks named
    ``<stem>...`` would be one file for each group."""
    by_stem: dict[str, list[str]] = {}
    for path in paths:
        by_stem.setdefault(Path(path).stem, []).append(show(path))
    return [group for group in by_stem.values() if len(group) > 1]


def check_pair(value: Any, name: str) -> tuple[int, int]:
    """``value`` (a positive int, or a pair of them: sizes, strides, windows) as an ``(int,
    int)`` pair; ValueError naming ``name`` otherwise (a bool, a float, zero, three values)."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value) \
        if isinstance(value, Iterable) else (value,)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1
                             for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them; got {value!r}")
    return int(pair[0]), int(pair[1])
