"""Argument checks shared by every layer: bad input is refused with a message
that names the argument, what was expected and what came."""

from __future__ import annotations

from collections.abc import Sequence
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


def check_channels(x: Any, channels: int, name: str = "x", field: str = "channels") -> None:
    """Raise ValueError unless the last axis of ``x`` has ``channels`` entries (the module's
    ``field``)."""
    if x.shape[-1] != channels:
        raise ValueError(
            f"{name} has {x.shape[-1]} channels (last axis of shape {tuple(x.shape)}); "
            f"the module was built for {field}={channels}"
        )


def check_image(x: Any, channels: int, name: str = "x", field: str = "channels") -> None:
    """Raise ValueError unless ``x`` is ``(B, H, W, channels)`` (NHWC)."""
    check_rank(x, 4, name, "B, H, W, C")
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


def check_rate(value: float, name: str) -> None:
    """Raise ValueError unless ``value`` is a probability in [0, 1) (a dropout or stochastic
    depth rate)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {value}")


def check_choice(value: Any, choices: Sequence[Any], name: str) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}")


def mismatch_report(missing: Sequence[str], unexpected: Sequence[str],
                    mis_shaped: Sequence[str]) -> str:
    """``"missing (2): a, b; mis-shaped (1): c ..."`` for the non-empty lists; ``""`` if all are
    empty (weights that fit)."""
    parts = [f"{title} ({len(items)}): " + ", ".join(sorted(items))
             for title, items in (("missing", missing), ("unexpected", unexpected),
                                  ("mis-shaped", mis_shaped)) if items]
    return "; ".join(parts)
