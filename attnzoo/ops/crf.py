"""Mean-field inference of the fully connected CRF (Krähenbühl & Koltun, NeurIPS 2011).

The Gibbs energy of a labelling ``x`` of the ``N`` pixels is

    E(x) = sum_i psi_u(x_i) + sum_{i<j} mu(x_i, x_j) sum_m w_m k_m(f_i, f_j),

with the unary ``psi_u = -log P`` of a segmentor, a compatibility ``mu`` (Potts:
``mu(l, l') = [l != l']``) and two Gaussian kernels ``k_m(f_i, f_j) = exp(-|f_i - f_j|^2 / 2)``:
appearance, ``f = (x / theta_alpha, y / theta_alpha, rgb / theta_beta)``, and smoothness,
``f = (x / theta_gamma, y / theta_gamma)``. One mean-field update (the paper's Algorithm 1) is

    Q_i(l) ∝ exp(-psi_u(l) - sum_l' mu(l, l') sum_m w_m Q~_i^m(l')),
    Q~_i^m(l) = sum_j k_m(f_i, f_j) Q_j(l),

a Gaussian-kernel sum over all pixel pairs: an unnormalised attention whose scores are
``-|f_i - f_j|^2 / 2``. Two exact-or-fast forms of that sum are here:

- :func:`gaussian_filter_dense`, exact, in ``O(chunk^2)`` memory (query chunks by
  :func:`~attnzoo.ops.map_query_chunks`, keys scanned in chunks), ``O(N^2 d)`` time;
- :func:`permutohedral_lattice` + :func:`lattice_filter`, the permutohedral-lattice
  approximation (Adams, Baek & Davis, Eurographics 2010) that the authors' code uses:
  splat onto the vertices of the enclosing simplices, blur with ``[1/2, 1, 1/2]`` along each of
  the ``d + 1`` lattice directions, slice; ``O(N d^2)`` plus one sort, so whole 512x1024 images
  run on a CPU. Written with a sort, binary searches and gathers instead of a hash table, so it
  is pure, jit-able and differentiable in the values and the features' barycentric weights;
  its cost follows the occupied vertices as a hash table's does (the neighbour search stops at
  the last one, the blur runs on the smallest of :func:`table_sizes` that holds them).

As in the authors' code (densecrf) and CRF-as-RNN, the sum includes ``j = i`` and each kernel's
message is normalised by the kernel's row sums ``n = K 1``: ``"symmetric"``
``n^-1/2 K (n^-1/2 Q)`` (densecrf's default, used by DeepLab) or ``"row"`` ``(K Q) / n``
(CRF-as-RNN). Either makes the lattice's overall scale irrelevant.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo._checks import check_choice, check_floating, check_positive, check_rank
from attnzoo.ops.dot_product import _pad_axis, map_query_chunks

Array = jax.Array

METHODS = ("lattice", "dense")
NORMALIZATIONS = ("symmetric", "row")


class CRFParams(NamedTuple):
    """Kernel parameters of the dense CRF (the defaults are DeepLab v2's released ResNet-101
    setting: 10 iterations, ``w1 = 4, theta_alpha = 67, theta_beta = 3, w2 = 3,
    theta_gamma = 1``)."""

    iterations: int = 10
    w_appearance: float = 4.0
    theta_alpha: float = 67.0
    theta_beta: float = 3.0
    w_smoothness: float = 3.0
    theta_gamma: float = 1.0


DEEPLAB_CRF = CRFParams()


def _check_bandwidth(value: float | Array, name: str) -> None:
    if isinstance(value, jax.core.Tracer):
        return  # a learnable bandwidth: checked where it is made positive (exp of a log)
    if not np.all(np.asarray(value) > 0):
        raise ValueError(f"{name} must be positive (a Gaussian bandwidth in pixels or intensity "
                         f"levels); got {value!r}")


def _check_weight(value: float | Array, name: str) -> None:
    if isinstance(value, jax.core.Tracer):
        return  # a learnable weight (CRF-as-RNN)
    if not np.all(np.isfinite(np.asarray(value, np.float64))):
        raise ValueError(f"{name} must be finite (a kernel's weight); got {value!r}")


def _check_compatibility(mu: Array, num_labels: int) -> None:
    if mu.shape != (num_labels, num_labels):
        raise ValueError(f"compatibility must be ({num_labels}, {num_labels}) for "
                         f"{num_labels} labels; got {mu.shape}")


def crf_features(image: Array, theta_alpha: float | Array, theta_beta: float | Array,
                 theta_gamma: float | Array) -> tuple[Array, Array]:
    """The kernels' features of ``image`` ``(B, H, W, 3)`` (RGB in 0-255): appearance
    ``(B, H*W, 5)`` = ``(x/theta_alpha, y/theta_alpha, r/theta_beta, g/theta_beta, b/theta_beta)``
    and smoothness ``(B, H*W, 2)`` = ``(x/theta_gamma, y/theta_gamma)``, pixels in row-major
    order (densecrf's feature order)."""
    check_rank(image, 4, "image", "B, H, W, 3")
    if image.shape[-1] != 3:
        raise ValueError(f"image must be RGB (B, H, W, 3); got shape {image.shape}")
    for value, name in ((theta_alpha, "theta_alpha"), (theta_beta, "theta_beta"),
                        (theta_gamma, "theta_gamma")):
        _check_bandwidth(value, name)
    b, h, w, _ = image.shape
    y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
    xy = jnp.broadcast_to(jnp.stack([x, y], -1).reshape(1, h * w, 2), (b, h * w, 2))
    rgb = image.astype(jnp.float32).reshape(b, h * w, 3)
    appearance = jnp.concatenate([xy / theta_alpha, rgb / theta_beta], -1)
    return appearance, xy / theta_gamma


def gaussian_filter_dense(features: Array, values: Array, *, chunk_size: int = 1024) -> Array:
    """Exact ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` over all ``j`` (``i`` included).

    ``features`` ``(B, N, d)``, ``values`` ``(B, N, C)``. Queries are taken ``chunk_size`` at a
    time and keys scanned ``chunk_size`` at a time, so memory is ``O(chunk_size^2 d)`` in the
    forward and backward passes. Squared distances are summed per feature (not expanded as
    ``|f_i|^2 + |f_j|^2 - 2 f_i.f_j``, which loses the small distances of large features to
    cancellation), all in float32.
    """
    check_rank(features, 3, "features", "B, N, d")
    check_rank(values, 3, "values", "B, N, C")
    if features.shape[:2] != values.shape[:2]:
        raise ValueError(f"features {features.shape} and values {values.shape} must share "
                         "(B, N)")
    check_positive(chunk_size, "chunk_size")
    n, c = values.shape[1], values.shape[2]
    f = features.astype(jnp.float32)
    v = values.astype(jnp.float32)
    kc = min(chunk_size, n)
    f_keys = _pad_axis(f, 1, kc).reshape(f.shape[0], -1, kc, f.shape[-1]).swapaxes(0, 1)
    v_keys = _pad_axis(v, 1, kc).reshape(v.shape[0], -1, kc, c).swapaxes(0, 1)
    valid = (jnp.arange(f_keys.shape[0] * kc) < n).reshape(-1, kc)

    def rows(f_query: Array) -> Array:
        @jax.checkpoint
        def step(acc: Array, inputs: tuple[Array, Array, Array]) -> tuple[Array, None]:
            f_j, v_j, valid_j = inputs
            d2 = jnp.sum(jnp.square(f_query[:, :, None, :] - f_j[:, None, :, :]), -1)
            k = jnp.where(valid_j, jnp.exp(-0.5 * d2), 0.0)
            return acc + jnp.einsum("bqk,bkc->bqc", k, v_j), None

        init = jnp.zeros(f_query.shape[:2] + (c,), jnp.float32)
        return jax.lax.scan(step, init, (f_keys, v_keys, valid))[0]

    return map_query_chunks(rows, (f,), chunk_size)


class Lattice(NamedTuple):
    """A permutohedral lattice built on one batch of features (see
    :func:`permutohedral_lattice`): for each point its ``d + 1`` enclosing-simplex vertices
    (``offsets``, slots of the lattice table, 0 is an always-zero slot) and barycentric
    ``weights``; for each lattice direction the table slots of each vertex's two neighbours
    (``neighbours`` ``(B, d+1, 2, slots)``, 0 where the neighbour holds no point); ``size_index``
    (a scalar) the position in :func:`table_sizes` of the smallest table that holds every batch
    item's occupied vertices, the slots the blur runs on (those after it are unused)."""

    offsets: Array
    weights: Array
    neighbours: Array
    size_index: Array


SMALLEST_TABLE = 1024
TABLE_LEVELS = 13


def table_sizes(points: int, d: int) -> tuple[int, ...]:
    """The lattice table sizes (slots) for ``points`` ``d``-dimensional features, ascending: the
    worst case ``W = points (d + 1) + 1`` (every vertex of every point's simplex distinct, plus
    the zero slot) and ``ceil(W / sqrt(2)^k)`` for ``k < TABLE_LEVELS`` (down to ``W / 64``),
    none under :data:`SMALLEST_TABLE`. A lattice's filter runs on the smallest that holds its
    occupied vertices, so the blur's cost follows them within a factor of ``sqrt(2)``; below
    ``W / 64`` the splat and slice (``W`` rows each) cost more than the blur saves. One branch
    of a ``lax.switch`` per size; only the chosen one runs."""
    worst = points * (d + 1) + 1
    floor = min(worst, SMALLEST_TABLE)
    return tuple(sorted({max(floor, math.ceil(worst / 2 ** (k / 2)))
                         for k in range(TABLE_LEVELS)}))


def _elevate(features: Array) -> Array:
    """Project ``(..., d)`` features onto the hyperplane ``sum = 0`` of ``R^{d+1}``, scaled so
    the lattice's blur is a unit-variance Gaussian in feature units (Adams et al., Sec. 3.1)."""
    d = features.shape[-1]
    i = np.arange(1, d + 1)
    scale = math.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt(i * (i + 1))
    cf = features * scale.astype(np.float32)
    tail = jnp.concatenate([jnp.cumsum(cf[..., ::-1], -1)[..., ::-1],
                            jnp.zeros_like(cf[..., :1])], -1)  # tail[j] = sum_{k >= j} cf[k]
    return tail.at[..., 1:].add(-i.astype(np.float32) * cf)


def _simplex(elevated: Array) -> tuple[Array, Array, Array]:
    """The nearest remainder-0 lattice point ``rem0`` (int), the rank of each coordinate's
    offset from it (which simplex holds the point) and the barycentric weights ``(..., d+1)``.
    Written per coordinate (``d + 1`` is small): elementwise ops on the points that fuse."""
    dp1 = elevated.shape[-1]
    d = dp1 - 1
    v = elevated / dp1
    up, down = jnp.ceil(v) * dp1, jnp.floor(v) * dp1
    rem0 = jnp.where(up - elevated < elevated - down, up, down)
    excess = jnp.round(rem0.sum(-1) / dp1).astype(jnp.int32)
    diff = [elevated[..., i] - rem0[..., i] for i in range(dp1)]
    # rank_i = #{j > i: diff_i < diff_j} + #{j < i: diff_j >= diff_i} (ties broken by index).
    rank = jnp.stack([sum((diff[j] > diff[i] if j > i else diff[j] >= diff[i]).astype(jnp.int32)
                          for j in range(dp1) if j != i) for i in range(dp1)], -1)
    rank = rank + excess[..., None]
    rem0 = rem0.astype(jnp.int32)
    low, high = rank < 0, rank > d
    rank = jnp.where(low, rank + dp1, jnp.where(high, rank - dp1, rank))
    rem0 = jnp.where(low, rem0 + dp1, jnp.where(high, rem0 - dp1, rem0))
    delta = (elevated - rem0) / dp1
    # Coordinate i adds its offset to weight d - rank_i and takes it from d + 1 - rank_i.
    bary = [sum(jnp.where(rank[..., i] == d - s, delta[..., i], 0.0)
                - jnp.where(rank[..., i] == d + 1 - s, delta[..., i], 0.0) for i in range(dp1))
            for s in range(d + 2)]
    bary[0] = bary[0] + 1.0 + bary[d + 1]
    return rem0, rank, jnp.stack(bary[:dp1], -1)


def _vertex_keys(features: Array) -> tuple[Array, Array]:
    """The simplex vertices of features ``(B, N, d)``: their keys ``(B, N (d+1), d)`` (the first
    ``d`` coordinates of each point's ``d + 1`` vertices; the last is minus their sum) and the
    barycentric weights ``(B, N, d+1)``."""
    b, n, d = features.shape
    dp1 = d + 1
    rem0, rank, bary = _simplex(_elevate(features.astype(jnp.float32)))
    # Vertex r of the simplex: rem0 plus the canonical simplex's vertex r, whose coordinate of
    # rank k is r if k <= d - r, else r - (d + 1).
    r = np.arange(dp1, dtype=np.int32)[:, None]
    keys = rem0[..., None, :d] + r - dp1 * (rank[..., None, :d] > d - r).astype(jnp.int32)
    return keys.reshape(b, n * dp1, d), bary


class _Box(NamedTuple):
    """The box the keys of one item span, in units of ``d + 1``: every coordinate of a lattice
    point has the same remainder ``k`` modulo ``d + 1``, so a key is ``k + (d + 1) m`` with
    ``low <= m < low + spans``; ``fits`` when ``(d + 1) prod(spans)`` codes fit one int32."""

    low: Array
    spans: Array
    fits: Array


def _box(keys: Array) -> _Box:
    dp1 = keys.shape[-1] + 1
    m = jnp.floor_divide(keys, dp1)
    low = m.min(0)
    spans = m.max(0) - low + 1
    return _Box(low, spans, jnp.prod(spans.astype(jnp.float32)) * dp1 < 2.0 ** 30)


def _pack(keys: Array, box: _Box) -> Array:
    """One int32 code per key ``(M, 1)``: ``k + (d + 1) sum_i (m_i - low_i) stride_i`` (strides
    the running products of ``spans``), -1 for a key outside the box (no vertex there)."""
    dp1 = keys.shape[-1] + 1
    m = jnp.floor_divide(keys, dp1) - box.low
    strides = jnp.cumprod(jnp.concatenate([box.spans[1:], jnp.ones(1, jnp.int32)])[::-1])[::-1]
    code = jnp.remainder(keys[:, 0], dp1) + dp1 * jnp.sum(m * strides, -1)
    return jnp.where(jnp.all((m >= 0) & (m < box.spans), -1), code, -1)[:, None]


def _unpack(codes: Array, box: _Box) -> Array:
    """The keys ``(M, d)`` of codes ``(M, 1)`` from :func:`_pack`."""
    dp1 = box.low.shape[0] + 1
    rest = codes[:, 0] // dp1
    m = []
    for span in jnp.unstack(box.spans)[::-1]:
        m.append(rest % span)
        rest = rest // span
    return jnp.remainder(codes, dp1) + dp1 * (jnp.stack(m[::-1], -1) + box.low)


def _lex_less(a: Array, b: Array) -> Array:
    """Row-wise lexicographic ``a < b`` of ``(..., c)`` integer codes (first column most
    significant)."""
    less = a[..., -1] < b[..., -1]
    for k in range(a.shape[-1] - 2, -1, -1):
        less = (a[..., k] < b[..., k]) | ((a[..., k] == b[..., k]) & less)
    return less


def _find(table: Array, count: Array, queries: Array) -> Array:
    """The slot of each of ``queries`` ``(Q, c)`` among the sorted codes in rows ``1..count`` of
    ``table``, 0 where absent: a vectorised binary search (lower bound), as deep as ``count``
    needs."""
    size = table.shape[0]
    lo = jnp.ones(queries.shape[0], jnp.int32)
    hi = jnp.full(queries.shape[0], count + 1, jnp.int32)

    def halve(_: Array, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds
        mid = (lo + hi) // 2
        go_right = _lex_less(table[jnp.minimum(mid, size - 1)], queries)
        searching = lo < hi
        return (jnp.where(searching & go_right, mid + 1, lo),
                jnp.where(searching & ~go_right, mid, hi))

    depth = 32 - jax.lax.clz(count + 1)  # the bit length of count + 1
    lo, _ = jax.lax.fori_loop(0, depth, halve, (lo, hi))
    found = (lo <= count) & jnp.all(table[jnp.minimum(lo, size - 1)] == queries, -1)
    return jnp.where(found, lo, 0)


def _table(codes: Array, points: int) -> tuple[Array, Array, Array]:
    """Deduplicate one item's vertex codes ``(N (d+1), c)``: the table of distinct codes, sorted
    (slot ``s`` in row ``s``, row 0 the zero slot; ``N (d+1) + 1`` rows), their number, and each
    point's ``d + 1`` slots ``(N, d+1)`` found in it by binary search."""
    cols = jax.lax.sort(tuple(codes.T), num_keys=codes.shape[1])
    ordered = jnp.stack(cols, -1)
    new = jnp.concatenate([jnp.ones((1,), bool), jnp.any(ordered[1:] != ordered[:-1], -1)])
    slot = jnp.cumsum(new.astype(jnp.int32))
    table = jnp.zeros((codes.shape[0] + 1, codes.shape[1]), jnp.int32).at[slot].set(ordered)
    count = slot[-1]
    return table, count, _find(table, count, codes).reshape(points, -1)


NEIGHBOUR_CHUNK = 16384


def _neighbours(table: Array, count: Array, box: _Box, packed: bool) -> Array:
    """The neighbour slots ``(B, d+1, 2, S)`` of the vertices in ``table`` ``(B, S, c)``
    (sorted codes, slots ``1..count`` occupied; 0 elsewhere): along direction ``j``, ``u + v_j``
    and ``u - v_j`` with ``v_j = (1, ..., 1) - (d+1) e_j`` (Adams et al., Sec. 3.1). The first
    is found by binary search among the codes; the second is its inverse (``u + v_j = u'``
    exactly when ``u' - v_j = u``). A loop over chunks of :data:`NEIGHBOUR_CHUNK` table rows
    that stops after the batch's last occupied one, so the cost follows ``count``."""
    b, size, c = table.shape
    chunk = min(NEIGHBOUR_CHUNK, size)
    rows = -(-size // chunk) * chunk
    table = jnp.pad(table, ((0, 0), (0, rows - size), (0, 0)))
    d = box.low.shape[-1]
    dp1 = d + 1
    steps = np.ones((dp1, d), np.int32) - dp1 * np.eye(dp1, d, dtype=np.int32)

    def search(start: Array, table: Array, count: Array, box: _Box, plus: Array,
               minus: Array) -> tuple[Array, Array]:
        codes = jax.lax.dynamic_slice_in_dim(table, start, chunk)
        keys = _unpack(codes, box) if packed else codes
        queries = (keys[None] + steps[:, None, :]).reshape(dp1 * chunk, d)
        slots = _find(table, count, _pack(queries, box) if packed else queries)
        index = start + jnp.arange(chunk, dtype=jnp.int32)
        slots = jnp.where((index >= 1) & (index <= count), slots.reshape(dp1, chunk), 0)
        plus = jax.lax.dynamic_update_slice_in_dim(plus, slots, start, axis=1)
        minus = jax.vmap(lambda m, s: m.at[jnp.where(s > 0, s, rows)].set(index, mode="drop"))(
            minus, slots)
        return plus, minus

    def step(i: Array, found: tuple[Array, Array]) -> tuple[Array, Array]:
        return jax.vmap(search, in_axes=(None, 0, 0, 0, 0, 0))(i * chunk, table, count, box,
                                                               *found)

    empty = jnp.zeros((b, dp1, rows), jnp.int32)
    plus, minus = jax.lax.fori_loop(0, jnp.max(count) // chunk + 1, step, (empty, empty))
    return jnp.stack([plus, minus], 2)[..., :size]


def permutohedral_lattice(features: Array) -> Lattice:
    """Build the permutohedral lattice of ``features`` ``(B, N, d)`` (already divided by their
    bandwidths), for :func:`lattice_filter`.

    Each point is lifted onto the hyperplane ``H_d = {sum = 0}`` of ``R^{d+1}``, scaled so that
    the lattice blur approximates ``exp(-|f_i - f_j|^2 / 2)``; its enclosing simplex is found
    from the nearest remainder-0 lattice point and the ranks of the coordinates' offsets, and
    its barycentric weights in that simplex computed (Adams et al. 2010, Sec. 3). The distinct
    vertices become the lattice table by a sort instead of a hash table: of one int32 code per
    vertex where the batch's keys span a small enough box (an image's do), else of the ``d``
    key columns; each point finds its vertices' slots by binary search. Each vertex's two
    neighbours along each of the ``d + 1`` directions are found by binary search too, in a loop
    that stops after the last occupied slot; their number (the batch's largest) picks the table
    size the filter runs on from :func:`table_sizes`. Arrays keep the static worst case of
    ``N (d + 1) + 1`` slots, so the function is jit-able and its shapes depend only on ``N``
    and ``d``.
    """
    check_rank(features, 3, "features", "B, N, d")
    _, n, d = features.shape
    keys, weights = _vertex_keys(features)
    box = jax.vmap(_box)(keys)
    sizes = table_sizes(n, d)

    def build(packed: bool) -> Callable[[Array, _Box], tuple[Array, Array, Array]]:
        def run(keys: Array, box: _Box) -> tuple[Array, Array, Array]:
            codes = jax.vmap(_pack)(keys, box) if packed else keys
            table, count, offsets = jax.vmap(functools.partial(_table, points=n))(codes)
            return offsets, _neighbours(table, count, box, packed), count
        return run

    offsets, neighbours, count = jax.lax.cond(jnp.all(box.fits), build(True), build(False),
                                              keys, box)
    size_index = jnp.searchsorted(jnp.asarray(sizes), jnp.max(count) + 1).astype(jnp.int32)
    return Lattice(offsets, weights, neighbours, size_index)


def _single_filter(offsets: Array, weights: Array, neighbours: Array, values: Array,
                   size: int) -> Array:
    n, dp1 = offsets.shape
    d = dp1 - 1
    table = jax.ops.segment_sum((weights[..., None] * values[:, None, :]).reshape(n * dp1, -1),
                                offsets.reshape(-1), num_segments=size)

    def blur(table: Array, pair: Array) -> tuple[Array, None]:
        return table + 0.5 * (table[pair[0]] + table[pair[1]]), None

    # A scan over the directions: unrolled, XLA fuses each direction's gathers into the next
    # one's and recomputes them (8x slower at 256x512).
    table = jax.lax.scan(blur, table, neighbours[..., :size])[0]
    alpha = 1.0 / (1.0 + 2.0 ** -d)
    # One gather per simplex vertex (an einsum over the gathered (N, d+1, C) is 10x slower).
    return alpha * sum(weights[:, r, None] * table[offsets[:, r]] for r in range(dp1))


def lattice_filter(lattice: Lattice, values: Array) -> Array:
    """Approximate ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` for ``values`` ``(B, N, C)`` on a
    lattice from :func:`permutohedral_lattice`: splat (each value spread over its simplex's
    vertices by its barycentric weights), blur (``[1/2, 1, 1/2]`` along each lattice direction
    in turn), slice (gathered back with the same weights), scaled by ``1 / (1 + 2^-d)``. The
    table has the lattice's chosen size (its ``size_index``)."""
    check_rank(values, 3, "values", "B, N, C")
    if values.shape[:2] != lattice.offsets.shape[:2]:
        raise ValueError(f"values {values.shape} do not match the lattice's points "
                         f"{lattice.offsets.shape[:2]}")
    _, n, dp1 = lattice.offsets.shape
    sizes = table_sizes(n, dp1 - 1)

    def run(size: int) -> Callable[[Lattice, Array], Array]:
        def filter_batch(lat: Lattice, v: Array) -> Array:
            return jax.vmap(functools.partial(_single_filter, size=size))(
                lat.offsets, lat.weights, lat.neighbours, v)
        return filter_batch

    return jax.lax.switch(lattice.size_index, [run(s) for s in sizes], lattice,
                          values.astype(jnp.float32))


def gaussian_filter(features: Array, *, method: str = "lattice",
                    chunk_size: int = 1024) -> Callable[[Array], Array]:
    """``values -> sum_j exp(-|f_i - f_j|^2 / 2) v_j`` for fixed ``features`` ``(B, N, d)``:
    the lattice is built once and reused for every call (``method="lattice"``); or the exact
    chunked sum (``method="dense"``)."""
    check_choice(method, METHODS, "method")
    if method == "dense":
        return lambda values: gaussian_filter_dense(features, values, chunk_size=chunk_size)
    lattice = permutohedral_lattice(features)
    return lambda values: lattice_filter(lattice, values)


def _normalized(filter_fn: Callable[[Array], Array], n: int, batch: int,
                normalization: str) -> Callable[[Array], Array]:
    norm = filter_fn(jnp.ones((batch, n, 1), jnp.float32))
    if normalization == "symmetric":
        scale = jax.lax.rsqrt(norm + 1e-20)
        return lambda q: scale * filter_fn(scale * q)
    inverse = 1.0 / (norm + 1e-20)
    return lambda q: inverse * filter_fn(q)


def mean_field(unary_logits: Array, filters: Sequence[Callable[[Array], Array]],
               kernel_weights: Sequence[float | Array], compatibility: Array, iterations: int,
               *, normalization: str = "symmetric") -> Array:
    """``iterations`` mean-field updates from ``Q = softmax(unary_logits)``.

    ``unary_logits`` ``(B, N, L)`` (``-psi_u`` up to a per-pixel constant); ``filters`` the
    kernels' ``K_m``; ``kernel_weights`` their ``w_m`` (scalars, or ``(L,)`` per class as
    CRF-as-RNN); ``compatibility`` ``mu`` ``(L, L)``. Each update is

        logits = unary_logits - (sum_m w_m N_m(Q)) mu^T,    Q = softmax(logits),

    with ``N_m`` the normalised message of kernel ``m``. Returns the last logits (``log Q`` up to
    a per-pixel constant). The loop is a ``lax.scan``, so it is differentiable.
    """
    check_rank(unary_logits, 3, "unary_logits", "B, N, L")
    check_floating(unary_logits, "unary_logits")
    check_positive(iterations, "iterations")
    check_choice(normalization, NORMALIZATIONS, "normalization")
    b, n, num_labels = unary_logits.shape
    _check_compatibility(compatibility, num_labels)
    if len(filters) != len(kernel_weights):
        raise ValueError(f"{len(filters)} filters but {len(kernel_weights)} kernel_weights")
    unary = unary_logits.astype(jnp.float32)
    messages = [_normalized(f, n, b, normalization) for f in filters]
    mu = jnp.asarray(compatibility, jnp.float32)

    def update(logits: Array, _: None) -> tuple[Array, None]:
        q = jax.nn.softmax(logits, -1)
        message = sum(jnp.asarray(w, jnp.float32) * m(q)
                      for m, w in zip(messages, kernel_weights))
        return unary - message @ mu.T, None

    return jax.lax.scan(update, unary, None, length=iterations)[0]


def potts(num_labels: int) -> Array:
    """The Potts compatibility ``mu(l, l') = [l != l']`` (``(L, L)``). Equivalent in mean field to
    densecrf's ``-I`` (the two differ by a per-pixel constant, which the softmax removes)."""
    check_positive(num_labels, "num_labels")
    return 1.0 - jnp.eye(num_labels, dtype=jnp.float32)


def dense_crf(logits: Array, image: Array, *, iterations: int = DEEPLAB_CRF.iterations,
              w_appearance: float | Array = DEEPLAB_CRF.w_appearance,
              theta_alpha: float | Array = DEEPLAB_CRF.theta_alpha,
              theta_beta: float | Array = DEEPLAB_CRF.theta_beta,
              w_smoothness: float | Array = DEEPLAB_CRF.w_smoothness,
              theta_gamma: float | Array = DEEPLAB_CRF.theta_gamma,
              compatibility: Array | None = None, method: str = "lattice",
              normalization: str = "symmetric", chunk_size: int = 1024) -> Array:
    """Refine segmentation ``logits`` ``(B, H, W, L)`` with the fully connected CRF on ``image``
    ``(B, H, W, 3)``, RGB in 0-255.

    Appearance kernel ``w_appearance * exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 /
    2 theta_beta^2)``, smoothness kernel ``w_smoothness * exp(-|p_i - p_j|^2 / 2 theta_gamma^2)``,
    Potts compatibility unless ``compatibility`` ``(L, L)`` is given; the defaults are DeepLab's
    (``DEEPLAB_CRF``, a :class:`CRFParams`). ``method`` ``"lattice"`` (permutohedral, fast) or ``"dense"`` (exact,
    chunked). Returns refined logits ``(B, H, W, L)`` (float32); their argmax is the labelling.
    """
    check_rank(logits, 4, "logits", "B, H, W, L")
    check_floating(logits, "logits")
    check_rank(image, 4, "image", "B, H, W, 3")
    if logits.shape[:3] != image.shape[:3]:
        raise ValueError(f"image {image.shape} and logits {logits.shape} must have the same "
                         "batch and spatial size (B, H, W)")
    check_choice(method, METHODS, "method")
    check_choice(normalization, NORMALIZATIONS, "normalization")
    check_positive(iterations, "iterations")
    _check_weight(w_appearance, "w_appearance")
    _check_weight(w_smoothness, "w_smoothness")
    b, h, w, num_labels = logits.shape
    mu = potts(num_labels) if compatibility is None else compatibility
    _check_compatibility(mu, num_labels)
    appearance, smoothness = crf_features(image, theta_alpha, theta_beta, theta_gamma)
    filters = [gaussian_filter(f, method=method, chunk_size=chunk_size)
               for f in (appearance, smoothness)]
    unary = jax.nn.log_softmax(logits.astype(jnp.float32), -1).reshape(b, h * w, num_labels)
    out = mean_field(unary, filters, [w_appearance, w_smoothness], mu, iterations,
                     normalization=normalization)
    return out.reshape(b, h, w, num_labels)
