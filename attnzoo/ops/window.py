"""Windowed (local) attention and its partition / merge helpers.

Liu et al., "Swin Transformer", ICCV 2021, section 3.2: self-attention within
non-overlapping ``M x M`` windows, an optional cyclic shift by ``M/2`` between
layers, and a learned relative position bias ``B`` indexed by the offset
between two positions of a window:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + B) V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo._checks import check_divisible, check_floating, check_pair, check_rank
from attnzoo.ops.dot_product import dot_product_attention

Array = jax.Array


def window_partition(x: Array, window_size: int | tuple[int, int]) -> Array:
    """``(B, H, W, ...)`` -> ``(B, nH, nW, wh * ww, ...)`` windows, row-major (a numpy array
    stays numpy: :func:`shifted_window_mask` partitions its region map at trace time)."""
    wh, ww = check_pair(window_size, "window_size")
    if x.ndim < 3:
        raise ValueError(f"x must have rank >= 3 (B, H, W, ...); got shape {x.shape}")
    b, h, w = x.shape[:3]
    check_divisible(h, wh, "height", "window height")
    check_divisible(w, ww, "width", "window width")
    rest = x.shape[3:]
    x = x.reshape((b, h // wh, wh, w // ww, ww) + rest).swapaxes(2, 3)
    return x.reshape((b, h // wh, w // ww, wh * ww) + rest)


def window_merge(windows: Array, window_size: int | tuple[int, int]) -> Array:
    """Inverse of :func:`window_partition`: ``(B, nH, nW, wh*ww, ...)`` -> ``(B, H, W, ...)``."""
    wh, ww = check_pair(window_size, "window_size")
    if windows.ndim < 4 or windows.shape[3] != wh * ww:
        raise ValueError(
            f"windows must be (B, nH, nW, {wh * ww}, ...) for window_size {(wh, ww)}; "
            f"got shape {windows.shape}"
        )
    b, nh, nw = windows.shape[:3]
    rest = windows.shape[4:]
    x = windows.reshape((b, nh, nw, wh, ww) + rest)
    x = jnp.moveaxis(x, 2, 3)
    return x.reshape((b, nh * wh, nw * ww) + rest)


def relative_position_index(window_size: int | tuple[int, int]) -> np.ndarray:
    """``(wh*ww, wh*ww)`` indices into a ``(2wh-1)(2ww-1)`` bias table.

    Entry ``[i, j]`` encodes the offset ``(y_i - y_j, x_i - x_j)`` as
    ``(dy + wh - 1) * (2 ww - 1) + (dx + ww - 1)``, Swin's layout.
    """
    wh, ww = check_pair(window_size, "window_size")
    ys, xs = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")
    coords = np.stack([ys.ravel(), xs.ravel()])
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def shifted_window_mask(
    height: int, width: int, window_size: int | tuple[int, int], shift_size: int | tuple[int, int]
) -> np.ndarray:
    """Boolean ``(nH, nW, M, M)`` mask for attention after a cyclic shift.

    After rolling the map by ``-shift``, a window can hold pixels from up to
    four regions that were not adjacent in the image; positions attend only
    to positions of their own region (True = may attend).
    """
    wh, ww = check_pair(window_size, "window_size")
    sh, sw = shift_size if isinstance(shift_size, tuple) else (shift_size, shift_size)
    region = np.zeros((height, width), np.int32)
    label = 0
    for ys in (slice(0, height - wh), slice(height - wh, height - sh), slice(height - sh, None)):
        for xs in (slice(0, width - ww), slice(width - ww, width - sw), slice(width - sw, None)):
            region[ys, xs] = label
            label += 1
    win = window_partition(region[None], (wh, ww))[0]
    return win[..., :, None] == win[..., None, :]


def window_attention(
    query: Array,
    key: Array,
    value: Array,
    window_size: int | tuple[int, int],
    *,
    bias: Array | None = None,
    mask: Array | np.ndarray | None = None,
    scale: float | None = None,
) -> Array:
    """Multi-head attention inside non-overlapping windows.

    Args:
      query, key: ``(B, H, W, heads, d)``; value ``(B, H, W, heads, dv)``.
        ``H`` and ``W`` must be multiples of the window (pad first).
      window_size: ``M`` or ``(Mh, Mw)``.
      bias: additive ``(heads, M*M, M*M)`` bias shared by all windows
        (a relative position bias gathered with :func:`relative_position_index`).
      mask: boolean ``(nH, nW, M*M, M*M)`` (from :func:`shifted_window_mask`).
      scale: defaults to ``1/sqrt(d)``.

    Returns ``(B, H, W, heads, dv)``.
    """
    for name, arr in (("query", query), ("key", key), ("value", value)):
        check_rank(arr, 5, name, "B, H, W, heads, d")
        check_floating(arr, name)
    size = check_pair(window_size, "window_size")
    q, k, v = (jnp.moveaxis(window_partition(t, size), -2, -3) for t in (query, key, value))
    # q: (B, nH, nW, heads, M*M, d)
    if mask is not None:
        mask = jnp.asarray(mask)[:, :, None]
    out = dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale)
    return window_merge(jnp.moveaxis(out, -3, -2), size)
