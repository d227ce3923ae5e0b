"""Resizing and pooling with PyTorch's exact semantics (what mmsegmentation's heads call).

``jax.image.resize`` antialiases when it downsamples; ``F.interpolate`` and
``F.adaptive_avg_pool2d`` do not, and mmsegmentation's PSP / PSANet heads
rely on them. These are the PyTorch definitions, written as gathers and
averaging matrices over the ``H`` and ``W`` axes of NHWC arrays.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo._checks import check_rank

Array = jax.Array


def linear_taps(size_in: Any, size_out: Any, length: int, align_corners: bool = False,
                ratio: float | None = None) -> tuple[Array, Array, Array]:
    """Bilinear taps along one axis: source indices ``i0``, ``i1`` and the weight of ``i1`` for
    output positions ``0 .. length - 1`` of a resize from ``size_in`` to ``size_out``.

    PyTorch's ``area_pixel_compute_source_index``: ``align_corners=False``:
    ``src = max((o + 0.5) * in / out - 0.5, 0)``, with ``ratio`` in place of ``in / out`` when
    given (PyTorch's ``scale_factor`` path: ``1 / scale_factor``); ``True``:
    ``src = o * (in - 1) / (out - 1)``. The sizes may be traced integers (one image of a batch
    of mixed sizes: coordinates in float32); ``length`` is static (positions past ``size_out``
    get clamped taps).
    """
    # static sizes: float64 coordinates in numpy (as exact as PyTorch's double reference);
    # traced sizes: float32 on the device
    xp = np if isinstance(size_in, int) and isinstance(size_out, int) else jnp
    o = xp.arange(length, dtype=np.float64 if xp is np else jnp.float32)
    size_in, size_out = xp.asarray(size_in, o.dtype), xp.asarray(size_out, o.dtype)
    if align_corners:
        src = o * ((size_in - 1) / xp.maximum(size_out - 1, 1))
    else:
        step = size_in / size_out if ratio is None else ratio
        src = xp.maximum((o + 0.5) * step - 0.5, 0.0)
    last = size_in.astype(np.int32) - 1
    i0 = xp.minimum(xp.floor(src).astype(np.int32), last)
    t = src - i0.astype(o.dtype)
    return jnp.asarray(i0), jnp.asarray(xp.minimum(i0 + 1, last)), jnp.asarray(t, jnp.float32)


def interpolate_axis(x: Array, axis: int, taps: tuple[Array, Array, Array]) -> Array:
    """Linear interpolation of ``x`` along ``axis`` with :func:`linear_taps`, in float32."""
    i0, i1, t = taps
    shape = [1] * x.ndim
    shape[axis] = t.shape[0]
    a = jnp.take(x, i0, axis=axis).astype(jnp.float32)
    b = jnp.take(x, i1, axis=axis).astype(jnp.float32)
    return a + (b - a) * t.reshape(shape)


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
    for axis, out in ((1, int(size[0])), (2, int(size[1]))):
        x = interpolate_axis(x, axis, linear_taps(x.shape[axis], out, out, align_corners)
                             ).astype(x.dtype)
    return x


def rescale_bilinear(x: Array, factor: float) -> Array:
    """``F.interpolate(x, scale_factor=factor, mode="bilinear")`` of NHWC ``x`` (mmseg's
    ``MultiLevelNeck``): output sizes ``floor(factor * H)``, ``floor(factor * W)``, source
    coordinates ``(o + 0.5) / factor - 0.5`` (the factor itself, not the sizes' ratio, which
    differs when ``factor * H`` is not whole)."""
    check_rank(x, 4, "x", "B, H, W, C")
    if factor <= 0:
        raise ValueError(f"factor must be positive; got {factor}")
    for axis in (1, 2):
        out = int(np.floor(x.shape[axis] * factor))
        if out < 1:
            raise ValueError(f"x's axis {axis} of size {x.shape[axis]} scaled by {factor} is "
                             f"empty")
        x = interpolate_axis(x, axis, linear_taps(x.shape[axis], out, out, ratio=1.0 / factor)
                             ).astype(x.dtype)
    return x


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution weights of the four taps at offsets -1, 0, 1, 2 for fractional
    positions ``t`` (``a = -0.75``, PyTorch's ``get_cubic_upsample_coefficients``)."""
    def near(d: np.ndarray) -> np.ndarray:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def resize_bicubic(x: Array, size: tuple[int, int]) -> Array:
    """``F.interpolate(x, size, mode="bicubic", align_corners=False)`` of NHWC ``x`` (how mmseg's
    ViT resizes its position embedding to the input's patch grid): per axis, source
    ``s = (o + 0.5) in / out - 0.5``, the four taps ``floor(s) - 1 .. floor(s) + 2`` clamped to
    the axis and weighted by :func:`_cubic_weights`; computed in float32."""
    check_rank(x, 4, "x", "B, H, W, C")
    dtype = x.dtype
    y = x.astype(jnp.float32)
    for axis, out in ((1, int(size[0])), (2, int(size[1]))):
        size_in = y.shape[axis]
        if size_in == out:
            continue
        src = (np.arange(out, dtype=np.float64) + 0.5) * (size_in / out) - 0.5
        base = np.floor(src).astype(np.int64)
        index = np.clip(base[:, None] + np.arange(-1, 3), 0, size_in - 1)
        weights = jnp.asarray(_cubic_weights(src - base), jnp.float32)
        taps = jnp.take(y, jnp.asarray(index.reshape(-1)), axis=axis)
        taps = taps.reshape(y.shape[:axis] + (out, 4) + y.shape[axis + 1:])
        shape = [1] * taps.ndim
        shape[axis], shape[axis + 1] = out, 4
        y = (taps * weights.reshape(shape)).sum(axis=axis + 1)
    return y.astype(dtype)


def interpolate(x: Array, size: tuple[int, int], *, align_corners: bool = False) -> Array:
    """:func:`resize_bilinear`'s result, computed the fastest way: upsampling with half-pixel
    centres is ``jax.image.resize``'s triangle filter (the same weights, no antialiasing when
    upsampling; XLA's fused kernel, a cheaper gradient than the gathers; float32 rounding of
    the coordinates differs by up to ~3e-6 of the values); otherwise :func:`resize_bilinear`."""
    check_rank(x, 4, "x", "B, H, W, C")
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    if not align_corners and all(int(o) >= i for o, i in zip(size, x.shape[1:3])):
        return jax.image.resize(x, (x.shape[0], int(size[0]), int(size[1]), x.shape[-1]),
                                "bilinear")
    return resize_bilinear(x, size, align_corners=align_corners)


def nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """PyTorch's ``mode="nearest"`` source index of each output position along one axis:
    ``min(floor(i * size_in / size_out), size_in - 1)``, the scale in float32 as PyTorch's
    kernel computes it (exact for 2x upsampling: ``i // 2``)."""
    scale = np.float32(size_in) / np.float32(size_out)
    index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, size_in - 1)


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
    """``F.interpolate(x, size, mode="nearest")`` of NHWC ``x`` (mmseg's FPN neck): each output
    pixel copies the input pixel :func:`nearest_index` gives on each axis."""
    check_rank(x, 4, "x", "B, H, W, C")
    (h, w), (oh, ow) = x.shape[1:3], (int(size[0]), int(size[1]))
    return x[:, nearest_index(h, oh)][:, :, nearest_index(w, ow)]


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
