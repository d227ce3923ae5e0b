"""Bipartite matching (the linear assignment problem) in ``jax.numpy``, for set losses that
pair predictions with targets inside a jitted step (DETR, MaskFormer, Mask2Former)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnzoo._checks import check_rank

Array = jax.Array


def _assign_rows(cost: Array) -> Array:
    """The column of each row of ``cost`` ``(n, m)``, ``n <= m``, in a minimum-cost assignment:
    Kuhn-Munkres by shortest augmenting paths with dual potentials (Jonker and Volgenant), one
    row added per outer step, ``O(n^2 m)``."""
    n, m = cost.shape
    dtype = cost.dtype
    # 1-based: row 0 and column 0 are the virtual root of each augmenting search
    padded = jnp.zeros((n + 1, m + 1), dtype).at[1:, 1:].set(cost)
    inf = jnp.asarray(jnp.inf, dtype)

    def add_row(i: Array, carry: tuple[Array, Array, Array, Array]
                ) -> tuple[Array, Array, Array, Array]:
        u, v, owner, way = carry  # potentials, the row each column holds (0: free), the path
        owner = owner.at[0].set(i)

        def grow(state: tuple) -> tuple:
            u, v, owner, way, slack, used, j0 = state
            used = used.at[j0].set(True)
            row = owner[j0]
            reduced = padded[row] - u[row] - v
            better = ~used & (reduced < slack)
            slack = jnp.where(better, reduced, slack)
            way = jnp.where(better, j0, way)
            free_slack = jnp.where(used, inf, slack).at[0].set(inf)
            j1 = jnp.argmin(free_slack)
            delta = free_slack[j1]
            u = u.at[owner].add(jnp.where(used, delta, jnp.zeros((), dtype)))
            v = jnp.where(used, v - delta, v)
            slack = jnp.where(used, slack, slack - delta)
            return u, v, owner, way, slack, used, j1

        state = (u, v, owner, way, jnp.full((m + 1,), inf), jnp.zeros((m + 1,), bool),
                 jnp.zeros((), jnp.int32))
        state = jax.lax.while_loop(lambda s: s[2][s[6]] != 0, grow, grow(state))
        u, v, owner, way, _, _, j0 = state

        def augment(carry: tuple[Array, Array]) -> tuple[Array, Array]:
            owner, j0 = carry
            j1 = way[j0]
            return owner.at[j0].set(owner[j1]), j1

        owner, _ = jax.lax.while_loop(lambda c: c[1] != 0, augment, (owner, j0))
        return u, v, owner, way

    init = (jnp.zeros((n + 1,), dtype), jnp.zeros((m + 1,), dtype),
            jnp.zeros((m + 1,), jnp.int32), jnp.zeros((m + 1,), jnp.int32))
    _, _, owner, _ = jax.lax.fori_loop(1, n + 1, add_row, init)
    # column j (1-based) holds row owner[j]; invert for the rows 1..n
    rows = jnp.zeros((n + 1,), jnp.int32).at[owner].set(jnp.arange(m + 1, dtype=jnp.int32))
    return rows[1:] - 1


def linear_sum_assignment(cost: Array) -> tuple[Array, Array]:
    """A minimum-cost matching of the rows and columns of ``cost`` ``(n, m)``: ``min(n, m)``
    pairs ``(row, col)``, no row or column twice, minimising ``sum cost[row, col]``
    (Kuhn's Hungarian method with Jonker-Volgenant shortest augmenting paths).

    The pairs come as scipy's ``linear_sum_assignment`` gives them: ``rows`` increasing (all of
    them when ``n <= m``) and ``cols`` their columns; equal to scipy's where the optimum is
    unique (tested on random matrices). Traceable with static shapes, so it runs inside
    ``jit`` (and under ``vmap`` for a batch of matrices); the costs must be finite (use a large
    finite value for a pair that must not be chosen). Computed in ``cost``'s floating dtype.

    Returns:
      ``(rows, cols)``, int32 arrays of ``min(n, m)`` entries.
    """
    check_rank(cost, 2, "cost", "rows, columns")
    if not jnp.issubdtype(cost.dtype, jnp.floating):
        cost = cost.astype(jnp.float32)
    n, m = cost.shape
    if n <= m:
        return jnp.arange(n, dtype=jnp.int32), _assign_rows(cost)
    # more rows than columns: assign the columns, then list the pairs by row
    rows_of_cols = _assign_rows(cost.T)
    order = jnp.argsort(rows_of_cols)
    return rows_of_cols[order], order.astype(jnp.int32)
