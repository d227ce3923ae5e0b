"""Dynamic (per-image) depthwise filtering (DMNet; He et al., "Dynamic Multi-scale Filters for
Semantic Segmentation", ICCV 2019).

Each image ``b`` carries its own ``f x f`` filter per channel, generated from its content (in
DMNet, a 1x1 conv of the image's features average-pooled to ``f x f``):

    y[b, h, w, c] = sum_{i, j < f} x_pad[b, h + i, w + j, c] K[b, i, j, c]

with ``x`` zero-padded by ``floor(f / 2)`` before and ``floor((f - 1) / 2)`` after on each
spatial axis (mmseg's ``DCM``: the same on both sides for odd ``f``, one more before for even).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating, check_rank

Array = jax.Array


def dynamic_depthwise_conv(x: Array, filters: Array) -> Array:
    """Filter each image's channels with that image's own depthwise filters (module docstring).

    Args:
      x: ``(B, H, W, C)``.
      filters: ``(B, f, f, C)``, image ``b``'s filter for channel ``c`` at ``[b, :, :, c]``.

    Returns:
      ``(B, H, W, C)``.
    """
    check_rank(x, 4, "x", "B, H, W, C")
    check_rank(filters, 4, "filters", "B, f, f, C")
    check_floating(x, "x")
    check_floating(filters, "filters")
    b, h, w, c = x.shape
    f = filters.shape[1]
    if filters.shape != (b, f, f, c):
        raise ValueError(f"filters must be (B, f, f, C) = ({b}, f, f, {c}) for x of shape "
                         f"{tuple(x.shape)}; got {tuple(filters.shape)}")
    x_pad = jnp.pad(x, ((0, 0), (f // 2, (f - 1) // 2), (f // 2, (f - 1) // 2), (0, 0)))
    return sum(x_pad[:, i:i + h, j:j + w] * filters[:, i, j][:, None, None]
               for i in range(f) for j in range(f))
