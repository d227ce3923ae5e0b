"""Resizing and pooling with PyTorch's exact semantics (what mmsegmentation's heads call).

``jax.image.resize`` antialiases when it downsamples; ``F.interpolate`` and
``F.adaptive_avg_pool2d`` do not, and mmsegmentation's PSP / PSANet heads
rely on them. These are the PyTorch definitions, written as gathers and
averaging matrices over the ``H`` and ``W`` axes of NHWC arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo._checks import check_rank

Array = jax.Array


def _linear_taps(size_in: int, size_out: int, align_corners: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``i0``, ``i1`` and the weight of ``i1`` for each output position.

    ``align_corners=False``: ``src = max((o + 0.5) * in / out - 0.5, 0)``; ``True``:
    ``src = o * (in - 1) / (out - 1)`` (PyTorch's ``area_pixel_compute_source_index``).
    """
    o = np.arange(size_out, dtype=np.float64)
    if align_corners:
        src = o * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros_like(o)
    else:
        src = np.maximum((o + 0.5) * (size_in / size_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(x: Array, size: tuple[int, int], *, align_corners: bool = False) -> Array:
    """``F.interpolate(x, size, mode="bilinear", align_corners=...)`` of NHWC ``x``: separable
    linear interpolation, no antialiasing in either direction.

    Args:
      x: ``(B, H, W, C)``.
      size: ``(h, w)`` of the output.
      align_corners: PyTorch's flag (corner pixels aligned instead of pixel centres).
    """
    check_rank(x, 4, "x", "B, H, W, C")
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    for axis, out in ((1, size[0]), (2, size[1])):
        i0, i1, t = _linear_taps(x.shape[axis], int(out), align_corners)
        shape = [1, 1, 1, 1]
        shape[axis] = len(t)
        t = jnp.asarray(t.reshape(shape), jnp.float32)
        a = jnp.take(x, i0, axis=axis).astype(jnp.float32)
        b = jnp.take(x, i1, axis=axis).astype(jnp.float32)
        x = (a + (b - a) * t).astype(x.dtype)
    return x


def _average_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(out, in)`` rows averaging PyTorch's adaptive bins ``[floor(i*in/out), ceil((i+1)*in/out))``."""
    m = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Array, size: tuple[int, int]) -> Array:
    """``F.adaptive_avg_pool2d(x, size)`` of NHWC ``x`` (bin ``i`` of ``n`` over an axis of
    length ``L`` covers ``[floor(i L / n), ceil((i + 1) L / n))``), accumulated in float32."""
    check_rank(x, 4, "x", "B, H, W, C")
    rows = jnp.asarray(_average_matrix(x.shape[1], int(size[0])))
    cols = jnp.asarray(_average_matrix(x.shape[2], int(size[1])))
    y = jnp.einsum("ih,bhwc,jw->bijc", rows, x.astype(jnp.float32), cols)
    return y.astype(x.dtype)
