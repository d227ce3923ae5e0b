"""Point-wise spatial attention (PSANet; Zhao et al., ECCV 2018).

Every position ``p`` predicts an over-complete map over a ``Hm x Wm`` window
centred on itself (``Hm = 2H - 1`` covers the whole feature map from any
position). mmcv's compiled ``PSAMask`` scatters it into a dense ``N x N``
matrix (``N = H W``); the head then aggregates features with it:

    collect:     z_p = 1/Z sum_i softmax_i(A_c[i, p]) x_i,   A_c[i, p] = a_p(i - p)
    distribute:  z_j = 1/Z sum_p softmax_p(A_d[p, j]) x_p,   A_d[p, j] = a_p(j - p)

where ``a_p(d)`` is the value position ``p`` predicts for offset ``d`` and
entries whose offset falls outside the window are 0 (they still enter the
softmax as exp(0), as in mmcv and the authors' code).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_choice, check_floating, check_rank

Array = jax.Array

MODES = ("collect", "distribute")


def _window_index(h: int, w: int, hm: int, wm: int) -> tuple[Array, Array]:
    """``(index, valid)``, each ``(N, N)``: for a pair (this position ``p``, other position
    ``j``) the channel of ``p``'s over-complete map holding offset ``j - p``, and whether that
    offset lies inside the window. Computed from iotas, so XLA builds it on the fly (no
    ``N x N`` constant in the program)."""
    ys, xs = jnp.divmod(jnp.arange(h * w, dtype=jnp.int32), w)
    dy = ys[None, :] - ys[:, None] + (hm - 1) // 2  # [p, j]
    dx = xs[None, :] - xs[:, None] + (wm - 1) // 2
    valid = (dy >= 0) & (dy < hm) & (dx >= 0) & (dx < wm)
    return jnp.where(valid, dy * wm + dx, 0), valid


def psa_mask(mask: Array, mask_size: tuple[int, int], mode: str) -> Array:
    """mmcv's ``PSAMask``: the over-complete map ``(B, H, W, Hm*Wm)`` -> ``(B, N, N)``.

    ``collect``: ``out[b, j, p] = mask[b, p, window(j - p)]`` (the other position first, as
    mmcv's ``(N, H*W, H, W)`` output); ``distribute``: ``out[b, p, j]``. 0 outside the window.
    """
    check_rank(mask, 4, "mask", "B, H, W, Hm*Wm")
    check_choice(mode, MODES, "mode")
    b, h, w, k = mask.shape
    hm, wm = mask_size
    if k != hm * wm:
        raise ValueError(f"mask has {k} channels; mask_size {tuple(mask_size)} needs {hm * wm}")
    index, valid = _window_index(h, w, hm, wm)
    gathered = jnp.take_along_axis(mask.reshape(b, h * w, k), index[None], axis=2)
    dense = jnp.where(valid[None], gathered, 0)  # [b, p, j]
    return dense if mode == "distribute" else jnp.swapaxes(dense, 1, 2)


def point_wise_spatial_attention(x: Array, mask: Array, mask_size: tuple[int, int], mode: str,
                                 *, softmax: bool = True, normalization: float = 1.0) -> Array:
    """The collect or distribute aggregation of PSANet (module docstring), NHWC.

    Args:
      x: features ``(B, H, W, C)``.
      mask: the over-complete maps ``(B, H, W, Hm*Wm)`` predicted at each position.
      mask_size: ``(Hm, Wm)``.
      mode: ``"collect"`` or ``"distribute"``.
      softmax: normalise the dense map over its first position axis (mmseg's
        ``psa_softmax``); the softmax runs in float32.
      normalization: ``Z``, the result is divided by it.
    """
    check_rank(x, 4, "x", "B, H, W, C")
    check_floating(x, "x")
    if x.shape[:3] != mask.shape[:3]:
        raise ValueError(f"x {x.shape} and mask {mask.shape} must share B, H, W")
    dense = psa_mask(mask, mask_size, mode).astype(jnp.float32)
    if softmax:
        dense = jax.nn.softmax(dense, axis=1)
    b, h, w, c = x.shape
    out = jnp.einsum("biq,bic->bqc", dense, x.reshape(b, h * w, c).astype(jnp.float32))
    return (out / normalization).reshape(b, h, w, c).astype(x.dtype)
