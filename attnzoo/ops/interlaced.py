"""Interlaced sparse self-attention (ISANet; Huang et al., "Interlaced Sparse Self-Attention for
Semantic Segmentation", 2019).

Dense self-attention over ``N = H W`` positions is factorised into two sparse ones. The map is
cut into ``P_h x P_w`` blocks (``down_factor``; zero-padded, centred, to a multiple of it):

* long-range: the positions that share an offset inside their block, one every ``P_h`` rows and
  ``P_w`` columns (``Q_h x Q_w = ceil(H / P_h) x ceil(W / P_w)`` of them), attend to each other;
* short-range: the positions of one block attend to each other.

Together every position reaches every other in two steps, at ``O(N (Q + P))`` instead of
``O(N^2)``. The two attentions are callables (the blocks of a head), each mapping a batch of
maps ``(B', h', w', C)`` to the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from attnzoo._checks import check_floating, check_rank

Array = jax.Array


def interlaced_sparse_attention(x: Array, down_factor: tuple[int, int],
                                long_range: Callable[[Array], Array],
                                short_range: Callable[[Array], Array]) -> Array:
    """``short_range`` over the blocks of ``long_range``'s output over the interlaced groups of
    ``x`` (the module docstring), each position returned to its place (mmseg's ``ISAHead``).

    Args:
      x: ``(B, H, W, C)``.
      down_factor: ``(P_h, P_w)``, the block size.
      long_range: applied to the ``B P_h P_w`` groups, ``(B P_h P_w, Q_h, Q_w, C)``.
      short_range: applied to the ``B Q_h Q_w`` blocks, ``(B Q_h Q_w, P_h, P_w, C)``.

    Returns:
      ``(B, H, W, C)``.
    """
    check_rank(x, 4, "x", "B, H, W, C")
    check_floating(x, "x")
    ph, pw = down_factor
    if ph < 1 or pw < 1:
        raise ValueError(f"down_factor must hold positive sizes; got {down_factor!r}")
    b, h, w, c = x.shape
    qh, qw = -(-h // ph), -(-w // pw)
    pad_h, pad_w = qh * ph - h, qw * pw - w
    x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0)))
    x = x.reshape(b, qh, ph, qw, pw, c).transpose(0, 2, 4, 1, 3, 5)  # (b, ph, pw, qh, qw, c)
    x = long_range(x.reshape(b * ph * pw, qh, qw, c)).reshape(b, ph, pw, qh, qw, c)
    x = x.transpose(0, 3, 4, 1, 2, 5)  # (b, qh, qw, ph, pw, c)
    x = short_range(x.reshape(b * qh * qw, ph, pw, c)).reshape(b, qh, qw, ph, pw, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, qh * ph, qw * pw, c)
    return x[:, pad_h // 2:pad_h // 2 + h, pad_w // 2:pad_w // 2 + w]
