"""Sampling features at fractional points, and multi-scale deformable attention (Zhu et al.,
"Deformable DETR", ICLR 2021, eq. (3)), the pixel decoder of Mask2Former.

Points are normalised ``(x, y)``: ``(0, 0)`` the top-left corner of the map, ``(1, 1)`` its
bottom-right corner, as PyTorch's ``grid_sample(align_corners=False)`` reads ``(grid + 1) / 2``
(the convention of mmcv's ``multi_scale_deformable_attn_pytorch`` and ``point_sample``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from attnzoo._checks import check_rank

Array = jax.Array


def _corners(points: Array, height: int, width: int) -> list[tuple[Array, Array]]:
    """The four bilinear neighbours of normalised ``points`` ``(..., 2)`` on a ``height x width``
    map: ``(flat index, weight)`` each, the weight zero for a neighbour outside the map (its
    index clipped inside)."""
    u = points[..., 0].astype(jnp.float32) * width - 0.5
    v = points[..., 1].astype(jnp.float32) * height - 0.5
    u0, v0 = jnp.floor(u), jnp.floor(v)
    out = []
    for du in (0, 1):
        for dv in (0, 1):
            ui, vj = u0 + du, v0 + dv
            weight = (1 - jnp.abs(u - ui)) * (1 - jnp.abs(v - vj))
            inside = (ui >= 0) & (ui <= width - 1) & (vj >= 0) & (vj <= height - 1)
            index = jnp.clip(vj, 0, height - 1) * width + jnp.clip(ui, 0, width - 1)
            out.append((index.astype(jnp.int32), jnp.where(inside, weight, 0.0)))
    return out


def _check_points(x: Array, points: Array, what: str) -> None:
    check_rank(points, 3, "points", "B, P, 2")
    if points.shape[0] != x.shape[0] or points.shape[-1] != 2:
        raise ValueError(f"points must be (B, P, 2) with B = {what}'s {x.shape[0]}; got "
                         f"{points.shape}")


def sample_points(x: Array, points: Array) -> Array:
    """Bilinear samples of ``x`` ``(B, H, W, C)`` at ``points`` ``(B, P, 2)`` (normalised
    ``(x, y)``), zero outside the map: ``(B, P, C)``.

    A point's pixel coordinates are ``u = x W - 1/2``, ``v = y H - 1/2`` (pixel centres at
    integers); the sample is ``sum_{i,j} (1 - |u - u_i|)(1 - |v - v_j|) x[v_j, u_i]`` over the
    four integer neighbours ``u_i in {floor(u), floor(u) + 1}`` (likewise ``v_j``), a neighbour
    outside the map counting as zero: PyTorch's ``grid_sample`` with ``mode="bilinear"``,
    ``padding_mode="zeros"``, ``align_corners=False`` at ``grid = 2 points - 1`` (mmcv's
    ``point_sample``). Computed in ``x``'s dtype, coordinates in float32.
    """
    check_rank(x, 4, "x", "B, H, W, C")
    _check_points(x, points, "x")
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c)
    out = jnp.zeros((b, points.shape[1], c), x.dtype)
    for index, weight in _corners(points, h, w):
        corner = jnp.take_along_axis(flat, index[..., None], axis=1)
        out = out + corner * weight[..., None].astype(x.dtype)
    return out


def sample_labels(labels: Array, points: Array, num_classes: int) -> Array:
    """:func:`sample_points` of the one-hot masks of ``labels`` ``(B, H, W)`` (integer classes;
    values outside ``[0, num_classes)``, the ignore index, in no mask) at ``points``
    ``(B, P, 2)``: ``(B, P, num_classes)`` float32, without forming the ``(B, H, W, K)``
    masks (each point reads the labels of its four neighbours)."""
    check_rank(labels, 3, "labels", "B, H, W")
    _check_points(labels, points, "labels")
    b, h, w = labels.shape
    flat = labels.reshape(b, h * w)
    out = jnp.zeros((b, points.shape[1], num_classes), jnp.float32)
    for index, weight in _corners(points, h, w):
        corner = jnp.take_along_axis(flat, index, axis=1)
        out = out + jax.nn.one_hot(corner, num_classes, dtype=jnp.float32) * weight[..., None]
    return out


def multi_scale_deformable_attention(values: Sequence[Array], locations: Array,
                                     weights: Array) -> Array:
    """Multi-scale deformable attention (Deformable DETR, eq. (3)) given the sampling
    locations and attention weights:

    .. math:: \\mathrm{out}_{q,m} = \\sum_{l=1}^{L} \\sum_{k=1}^{K} A_{mlqk}\\,
              x^l_m\\big(\\phi_l(\\hat p_q) + \\Delta p_{mlqk}\\big)

    for each head ``m``: the head's channels of level ``l``'s value map ``x^l_m`` sampled
    bilinearly (:func:`sample_points`, zero outside) at the ``K`` locations of query ``q`` on
    that level, weighted by ``A`` (which the caller normalises over the ``L K`` samples).

    Args:
      values: ``L`` value maps ``(B, H_l, W_l, M, D)`` (heads ``M`` of ``D`` channels).
      locations: ``(B, Q, M, L, K, 2)`` normalised ``(x, y)`` sampling locations.
      weights: ``(B, Q, M, L, K)`` attention weights.

    Returns:
      ``(B, Q, M D)``: the heads' outputs concatenated, in the values' dtype.
    """
    check_rank(locations, 6, "locations", "B, Q, M, L, K, 2")
    check_rank(weights, 5, "weights", "B, Q, M, L, K")
    b, q, m, levels, k, _ = locations.shape
    if len(values) != levels or weights.shape != locations.shape[:-1]:
        raise ValueError(f"values ({len(values)} levels), locations {locations.shape} and "
                         f"weights {weights.shape} disagree: values must be L maps and weights "
                         "locations' shape without its last axis")
    out = 0.0
    for level, value in enumerate(values):
        check_rank(value, 5, f"values[{level}]", "B, H, W, M, D")
        _, h, w, _, d = value.shape
        # the heads into the batch: (B M, H, W, D) sampled at (B M, Q K, 2)
        maps = jnp.moveaxis(value, 3, 1).reshape(b * m, h, w, d)
        points = jnp.moveaxis(locations[:, :, :, level], 2, 1).reshape(b * m, q * k, 2)
        samples = sample_points(maps, points).reshape(b, m, q, k, d)
        weight = jnp.moveaxis(weights[:, :, :, level], 2, 1).astype(value.dtype)
        out = out + jnp.einsum("bmqkd,bmqk->bqmd", samples, weight)
    return out.reshape(b, q, m * values[0].shape[-1])


def sample_label_masks(labels: Array, points: Array, classes: Array) -> Array:
    """:func:`sample_points` of one class mask of ``labels`` ``(B, H, W)`` per row of
    ``points`` ``(B, M, P, 2)``: the mask of class ``classes[b, m]`` (``(B, M)`` integers) at
    ``points[b, m]``; ``(B, M, P)`` float32 (each point reads the labels of its four
    neighbours)."""
    check_rank(labels, 3, "labels", "B, H, W")
    check_rank(points, 4, "points", "B, M, P, 2")
    b, h, w = labels.shape
    m, p = points.shape[1:3]
    if points.shape[0] != b or classes.shape != (b, m):
        raise ValueError(f"points {points.shape} and classes {classes.shape} must be (B, M, P, "
                         f"2) and (B, M) with B = labels' {b}")
    flat = labels.reshape(b, h * w)
    out = jnp.zeros((b, m * p), jnp.float32)
    target = jnp.repeat(classes, p, axis=1)
    for index, weight in _corners(points.reshape(b, m * p, 2), h, w):
        corner = jnp.take_along_axis(flat, index, axis=1)
        out = out + jnp.where(corner == target, weight, 0.0)
    return out.reshape(b, m, p)
