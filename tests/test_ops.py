"""Every op against a plain numpy reference (loops or the dense formula) on random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import ops

RTOL = 1e-5  # float32, stated by the issue for the memory-bounded path
ATOL = 1e-5


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def ref_attention(q, k, v, scale, mask=None):
    """Loop over queries: out_i = sum_j softmax_j(scale q_i.k_j) v_j (float64)."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for b in np.ndindex(q.shape[:-2]):
        for i in range(q.shape[-2]):
            s = scale * (k[b] @ q[b][i])
            if mask is not None:
                s = np.where(mask[i], s, -np.inf)
            out[b][i] = softmax(s) @ v[b]
    return out


# -- dot-product attention ----------------------------------------------------------------------


def test_dot_product_matches_loop():
    rng = np.random.default_rng(0)
    q, k, v = rand(rng, 2, 3, 17, 8), rand(rng, 2, 3, 23, 8), rand(rng, 2, 3, 23, 5)
    out = ops.dot_product_attention(q, k, v)
    np.testing.assert_allclose(out, ref_attention(q, k, v, 8**-0.5), rtol=RTOL, atol=ATOL)


def test_dot_product_mask_and_bias():
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, 2, 6, 4), rand(rng, 2, 6, 4), rand(rng, 2, 6, 3)
    mask = np.tril(np.ones((6, 6), bool))
    out = ops.dot_product_attention(q, k, v, mask=mask, scale=1.0)
    np.testing.assert_allclose(out, ref_attention(q, k, v, 1.0, mask), rtol=RTOL, atol=ATOL)
    bias = rand(rng, 6, 6)
    got = ops.dot_product_attention(q, k, v, bias=bias, scale=1.0)
    want = np.einsum("bqk,bkd->bqd", softmax(np.einsum("bqd,bkd->bqk", q, k) + bias), v)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "nq,nk,qc,kc", [(64, 64, 16, 16), (100, 77, 32, 20), (5, 300, 8, 64), (33, 33, 1024, 4096)]
)
def test_chunked_equals_dense(nq, nk, qc, kc):
    rng = np.random.default_rng(nq + nk)
    q, k, v = rand(rng, 2, nq, 16, scale=2.0), rand(rng, 2, nk, 16, scale=2.0), rand(rng, 2, nk, 8)
    dense = ops.dot_product_attention(q, k, v, scale=1.0)
    chunked = ops.chunked_dot_product_attention(
        q, k, v, scale=1.0, query_chunk_size=qc, key_chunk_size=kc
    )
    np.testing.assert_allclose(chunked, dense, rtol=RTOL, atol=ATOL)


def test_chunked_gradients_equal_dense():
    rng = np.random.default_rng(3)
    q, k, v = rand(rng, 1, 50, 8), rand(rng, 1, 50, 8), rand(rng, 1, 50, 4)

    def loss(fn, q, k, v):
        return (fn(q, k, v) ** 2).sum()

    dense = jax.grad(lambda *a: loss(ops.dot_product_attention, *a), argnums=(0, 1, 2))(q, k, v)
    chunked_fn = lambda q, k, v: ops.chunked_dot_product_attention(
        q, k, v, query_chunk_size=16, key_chunk_size=12
    )
    chunked = jax.grad(lambda *a: loss(chunked_fn, *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(chunked, dense):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dot_product_bad_shapes():
    x = np.zeros((2, 4, 8), np.float32)
    with pytest.raises(ValueError, match="query and key"):
        ops.dot_product_attention(x, np.zeros((2, 4, 7), np.float32), x)
    with pytest.raises(ValueError, match="key and value"):
        ops.chunked_dot_product_attention(x, x, np.zeros((2, 5, 8), np.float32))
    with pytest.raises(ValueError, match="query_chunk_size"):
        ops.chunked_dot_product_attention(x, x, x, query_chunk_size=0)


def test_bfloat16_softmax_in_float32():
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rand(rng, 1, 32, 16, scale=3.0), jnp.bfloat16) for _ in range(3))
    out = ops.dot_product_attention(q, k, v)
    assert out.dtype == jnp.bfloat16
    want = ref_attention(*(np.asarray(a, np.float32) for a in (q, k, v)), 16**-0.5)
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=5e-2)


# -- DANet position / channel -------------------------------------------------------------------


def ref_pam(q, k, v):
    """Official formulation: energy = Q^T K (N x N), A = softmax(energy), out = V A^T."""
    b, h, w, c = v.shape
    Q = q.reshape(b, h * w, -1).transpose(0, 2, 1).astype(np.float64)  # (B, d, N)
    K = k.reshape(b, h * w, -1).transpose(0, 2, 1).astype(np.float64)
    V = v.reshape(b, h * w, c).transpose(0, 2, 1).astype(np.float64)  # (B, C, N)
    out = np.stack([V[i] @ softmax(Q[i].T @ K[i]).T for i in range(b)])
    return out.transpose(0, 2, 1).reshape(b, h, w, c)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_position_attention(memory_efficient):
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, 2, 6, 7, 4), rand(rng, 2, 6, 7, 4), rand(rng, 2, 6, 7, 12)
    out = ops.position_attention(
        q, k, v, memory_efficient=memory_efficient, query_chunk_size=10, key_chunk_size=16
    )
    np.testing.assert_allclose(out, ref_pam(q, k, v), rtol=RTOL, atol=ATOL)


def test_position_attention_map_points():
    rng = np.random.default_rng(6)
    q, k = rand(rng, 1, 4, 5, 3), rand(rng, 1, 4, 5, 3)
    maps = np.asarray(ops.position_attention_map(q, k, points=[(0, 0), (3, 4)]))
    assert maps.shape == (1, 2, 4, 5)
    full = softmax(q.reshape(20, 3) @ k.reshape(20, 3).T)
    np.testing.assert_allclose(maps[0, 1].ravel(), full[19], rtol=RTOL)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, rtol=RTOL)
    with pytest.raises(ValueError, match="outside"):
        ops.position_attention_map(q, k, points=[(4, 0)])


def ref_cam(x):
    b, h, w, c = x.shape
    X = x.reshape(b, h * w, c).transpose(0, 2, 1).astype(np.float64)  # (B, C, N)
    out = []
    for i in range(b):
        energy = X[i] @ X[i].T
        energy_new = energy.max(-1, keepdims=True) - energy
        out.append(softmax(energy_new) @ X[i])
    return np.stack(out).transpose(0, 2, 1).reshape(b, h, w, c)


def test_channel_attention():
    rng = np.random.default_rng(7)
    x = rand(rng, 2, 5, 6, 9, scale=0.3)
    np.testing.assert_allclose(ops.channel_attention(x), ref_cam(x), rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="rank 4"):
        ops.channel_attention(x[0])


# -- criss-cross --------------------------------------------------------------------------------


def ref_criss_cross(q, k, v):
    """Loop over positions: attend to column (centre excluded) and row (centre included)."""
    b, h, w, _ = q.shape
    out = np.zeros(v.shape[:3] + (v.shape[-1],))
    for n in range(b):
        for y in range(h):
            for x in range(w):
                keys, vals = [], []
                for i in range(h):
                    if i != y:
                        keys.append(k[n, i, x]); vals.append(v[n, i, x])
                for j in range(w):
                    keys.append(k[n, y, j]); vals.append(v[n, y, j])
                keys, vals = np.array(keys, np.float64), np.array(vals, np.float64)
                assert len(keys) == h + w - 1
                out[n, y, x] = softmax(keys @ q[n, y, x]) @ vals
    return out


def test_criss_cross_attention():
    rng = np.random.default_rng(8)
    q, k, v = rand(rng, 2, 5, 7, 3), rand(rng, 2, 5, 7, 3), rand(rng, 2, 5, 7, 6)
    out = ops.criss_cross_attention(q, k, v)
    np.testing.assert_allclose(out, ref_criss_cross(q, k, v), rtol=RTOL, atol=ATOL)
    col, row = ops.criss_cross_weights(q, k)
    np.testing.assert_allclose(col.sum(-1) + row.sum(-1), 1.0, rtol=RTOL)
    assert np.all(np.asarray(col)[:, np.arange(5), :, np.arange(5)] == 0)  # centre counted once


# -- non-local ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product"])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_non_local(mode, memory_efficient):
    rng = np.random.default_rng(9)
    theta, phi, g = rand(rng, 2, 6, 5, 4), rand(rng, 2, 3, 5, 4), rand(rng, 2, 3, 5, 7)
    out = ops.non_local_attention(
        theta, phi, g, mode=mode, memory_efficient=memory_efficient,
        query_chunk_size=7, key_chunk_size=4,
    )
    T, P, G = (a.reshape(2, -1, a.shape[-1]).astype(np.float64) for a in (theta, phi, g))
    pair = np.einsum("bqd,bkd->bqk", T, P)
    if mode == "embedded_gaussian":
        pair = softmax(pair / 2.0)  # sqrt(d) = 2
    elif mode == "gaussian":
        pair = softmax(pair)
    else:
        pair = pair / P.shape[1]
    want = np.einsum("bqk,bkc->bqc", pair, G).reshape(2, 6, 5, 7)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_non_local_concatenation(memory_efficient):
    rng = np.random.default_rng(10)
    a, b, g = rand(rng, 2, 4, 5), rand(rng, 2, 4, 5), rand(rng, 2, 4, 5, 3)
    out = ops.non_local_concatenation(a, b, g, memory_efficient=memory_efficient, query_chunk_size=6)
    want = np.zeros((2, 20, 3))
    for n in range(2):
        for i in range(20):
            for j in range(20):
                want[n, i] += max(a[n].ravel()[i] + b[n].ravel()[j], 0) * g[n].reshape(20, 3)[j]
    np.testing.assert_allclose(out, (want / 20).reshape(2, 4, 5, 3), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("use_scale", [True, False])
def test_disentangled_non_local_equals_a_loop(memory_efficient, use_scale):
    """Each query's output, looped in float64: the softmax over keys of the whitened pairwise
    logits (theta and phi minus their mean over positions, divided by sqrt(d) T) times g, plus
    the unary softmax over the positions' logits times g."""
    rng = np.random.default_rng(12)
    theta, phi, g = rand(rng, 2, 4, 5, 6), rand(rng, 2, 4, 5, 6), rand(rng, 2, 4, 5, 3)
    m = rand(rng, 2, 4, 5)
    out = ops.disentangled_non_local_attention(
        theta, phi, g, m, temperature=0.3, use_scale=use_scale,
        memory_efficient=memory_efficient, query_chunk_size=7, key_chunk_size=4)
    want = np.zeros((2, 20, 3))
    for n in range(2):
        t, p, v = (a[n].reshape(20, -1).astype(np.float64) for a in (theta, phi, g))
        t, p = t - t.mean(0), p - p.mean(0)
        unary = softmax(m[n].ravel().astype(np.float64)) @ v
        for i in range(20):
            logits = p @ t[i] / ((np.sqrt(6) if use_scale else 1.0) * 0.3)
            want[n, i] = softmax(logits) @ v + unary
    np.testing.assert_allclose(out, want.reshape(2, 4, 5, 3), rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="temperature must be positive"):
        ops.disentangled_non_local_attention(theta, phi, g, m, temperature=0.0)
    with pytest.raises(ValueError, match="unary_logits and g must share"):
        ops.disentangled_non_local_attention(theta, phi, g, m[:, :3])


def test_interlaced_sparse_attention_groups_and_orders_positions_as_a_loop():
    """Long-range groups (one offset inside every down_factor block, in row-major block order)
    then short-range ones (each block), on a map padded to a multiple of the blocks, centred,
    and cropped back. The two stand-in attentions are order-sensitive (cumulative sums over the
    group's positions, row-major) so that every permutation is checked, not only the grouping."""
    rng = np.random.default_rng(13)
    x = rand(rng, 2, 7, 10, 3)

    def cumulative(t, xp=np):
        return xp.cumsum(t.reshape(t.shape[0], -1, t.shape[-1]), axis=1).reshape(t.shape)

    out = ops.interlaced_sparse_attention(jnp.asarray(x), (3, 4),
                                          lambda t: cumulative(t, jnp),
                                          lambda t: 2 * cumulative(t, jnp))
    y = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))  # 9 x 12: pads 2 and 2
    for a in range(3):
        for c in range(4):
            rows, cols = [q * 3 + a for q in range(3)], [s * 4 + c for s in range(3)]
            index = np.ix_(range(2), rows, cols)
            y[index] = cumulative(y[index])
    for q in range(3):
        for s_ in range(3):
            block = (slice(None), slice(3 * q, 3 * q + 3), slice(4 * s_, 4 * s_ + 4))
            y[block] = 2 * cumulative(y[block])
    np.testing.assert_allclose(out, y[:, 1:8, 1:11], rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="down_factor must hold positive sizes"):
        ops.interlaced_sparse_attention(jnp.asarray(x), (0, 4), lambda t: t, lambda t: t)


@pytest.mark.parametrize("f", [1, 3, 4, 7])
def test_dynamic_depthwise_conv_is_a_per_image_loop(f):
    """Each image filtered with its own per-channel f x f filter, zero padding f // 2 before and
    (f - 1) // 2 after (mmseg's DCM: one more before for even f), against a float64 loop."""
    rng = np.random.default_rng(f)
    x, filters = rand(rng, 2, 5, 6, 3), rand(rng, 2, f, f, 3)
    want = np.zeros((2, 5, 6, 3))
    for b in range(2):
        for h in range(5):
            for w in range(6):
                for i in range(f):
                    for j in range(f):
                        u, v = h + i - f // 2, w + j - f // 2
                        if 0 <= u < 5 and 0 <= v < 6:
                            want[b, h, w] += x[b, u, v].astype(np.float64) * filters[b, i, j]
    out = jax.jit(ops.dynamic_depthwise_conv)(jnp.asarray(x), jnp.asarray(filters))
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match=r"filters must be \(B, f, f, C\)"):
        ops.dynamic_depthwise_conv(jnp.asarray(x), jnp.asarray(filters[:1]))


def test_em_attention_is_the_papers_iterations_without_gradients():
    """T EM iterations from shared unit bases in float64 loops (E: softmax over bases, M: the
    z-weighted mean of the features, each basis L2-normalised), the reconstruction from the last
    z and mu; no gradient reaches x through them."""
    rng = np.random.default_rng(21)
    x, bases = rand(rng, 2, 13, 6), rand(rng, 6, 4)
    bases /= np.linalg.norm(bases, axis=0)
    recon, mu = jax.jit(ops.em_attention, static_argnums=2)(jnp.asarray(x), jnp.asarray(bases),
                                                            3)
    for b in range(2):
        feats, m = x[b].astype(np.float64), bases.astype(np.float64)
        for _ in range(3):
            logits = feats @ m
            z = np.exp(logits - logits.max(1, keepdims=True))
            z /= z.sum(1, keepdims=True)
            m = np.stack([(z[:, k, None] * feats).sum(0) / z[:, k].sum() for k in range(4)], 1)
            m /= np.linalg.norm(m, axis=0)
        np.testing.assert_allclose(mu[b], m, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(recon[b], z @ m.T, rtol=RTOL, atol=ATOL)
    grad = jax.grad(lambda t: ops.em_attention(t, jnp.asarray(bases), 2)[0].sum())(jnp.asarray(x))
    assert not np.asarray(grad).any()
    with pytest.raises(ValueError, match=r"bases must be \(C, K\) or \(B, C, K\) with C = 6"):
        ops.em_attention(jnp.asarray(x), jnp.asarray(bases[:5]), 1)


def test_context_encoding_is_the_residual_sum_of_a_loop():
    """EncNet's encoding layer against its definition in float64 loops: the softmax over codes
    of s_k ||x_i - c_k||^2 weighting the residuals x_i - c_k."""
    rng = np.random.default_rng(8)
    x, codewords, scale = rand(rng, 2, 9, 5), rand(rng, 4, 5), -rng.uniform(0, 1, 4)
    out = jax.jit(ops.context_encoding)(jnp.asarray(x), jnp.asarray(codewords),
                                        jnp.asarray(scale, jnp.float32))
    want = np.zeros((2, 4, 5))
    for b in range(2):
        for i in range(9):
            logits = [scale[k] * ((x[b, i] - codewords[k]).astype(np.float64) ** 2).sum()
                      for k in range(4)]
            a = np.exp(np.array(logits) - max(logits))
            a /= a.sum()
            for k in range(4):
                want[b, k] += a[k] * (x[b, i] - codewords[k].astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match=r"codewords must be \(K, C\) with C = 5"):
        ops.context_encoding(jnp.asarray(x), jnp.asarray(codewords[:, :4]), jnp.asarray(scale))


def test_spatial_gather_is_a_softmax_weighted_mean_per_class():
    """OCR's object region representations against float64 loops: per class, the pixel
    features weighted by the softmax over pixels of its scaled region logits."""
    rng = np.random.default_rng(17)
    feats, logits = rand(rng, 2, 4, 5, 3), rand(rng, 2, 4, 5, 6, scale=3.0)
    out = jax.jit(ops.spatial_gather, static_argnums=2)(jnp.asarray(feats), jnp.asarray(logits),
                                                        0.5)
    for b in range(2):
        for k in range(6):
            w = np.exp(0.5 * logits[b, ..., k].astype(np.float64).ravel())
            w /= w.sum()
            want = (w[:, None] * feats[b].reshape(20, 3)).sum(0)
            np.testing.assert_allclose(out[b, k], want, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="must share"):
        ops.spatial_gather(jnp.asarray(feats), jnp.asarray(logits[:, :3]))


def test_non_local_bad_mode():
    x = np.ones((1, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.non_local_attention(x, x, x, mode="concat")


# -- windows ------------------------------------------------------------------------------------


def test_window_partition_roundtrip_and_layout():
    rng = np.random.default_rng(11)
    x = rand(rng, 2, 6, 8, 3)
    win = ops.window_partition(x, (3, 4))
    assert win.shape == (2, 2, 2, 12, 3)
    np.testing.assert_array_equal(win[1, 1, 0, 5], x[1, 3 + 1, 0 + 1])  # row 1, col 1 of window (1, 0)
    np.testing.assert_array_equal(ops.window_merge(win, (3, 4)), x)
    with pytest.raises(ValueError, match="divisible"):
        ops.window_partition(x, 5)


def test_window_attention_matches_loop():
    rng = np.random.default_rng(12)
    b, h, w, heads, d, m = 1, 4, 6, 2, 3, 2
    q, k, v = rand(rng, b, h, w, heads, d), rand(rng, b, h, w, heads, d), rand(rng, b, h, w, heads, d)
    table = rand(rng, (2 * m - 1) ** 2, heads)
    bias = np.transpose(table[ops.relative_position_index(m)], (2, 0, 1))
    out = np.asarray(ops.window_attention(q, k, v, m, bias=bias))
    for y0 in range(0, h, m):
        for x0 in range(0, w, m):
            for hd in range(heads):
                pos = [(y0 + i, x0 + j) for i in range(m) for j in range(m)]
                Q = np.array([q[0, y, x, hd] for y, x in pos])
                K = np.array([k[0, y, x, hd] for y, x in pos])
                V = np.array([v[0, y, x, hd] for y, x in pos])
                rel = np.array([[table[(p[0] - r[0] + m - 1) * (2 * m - 1) + p[1] - r[1] + m - 1, hd]
                                 for r in pos] for p in pos])
                want = softmax(Q @ K.T / np.sqrt(d) + rel) @ V
                got = np.array([out[0, y, x, hd] for y, x in pos])
                np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_shifted_window_mask_separates_regions():
    mask = ops.shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (2, 2, 16, 16)
    assert mask[0, 0].all()  # the top-left window holds one region only
    last = mask[1, 1]  # four regions, each 2x2 pixels of the 4x4 window
    assert last.sum() == 4 * 4 * 4 and last[0, 0] and not last[0, 2] and not last[0, 8]


# -- polarized ----------------------------------------------------------------------------------


def test_polarized_cores():
    rng = np.random.default_rng(13)
    q1, v = rand(rng, 2, 4, 5, 1), rand(rng, 2, 4, 5, 6)
    want = np.stack([softmax(q1[n].ravel()) @ v[n].reshape(20, 6) for n in range(2)])
    np.testing.assert_allclose(ops.polarized_channel_context(q1, v), want, rtol=RTOL, atol=ATOL)
    q = rand(rng, 2, 4, 5, 6)
    want = np.stack([softmax(v[n].reshape(20, 6) @ q[n].reshape(20, 6).mean(0)) for n in range(2)])
    got = ops.polarized_spatial_weights(q, v)
    np.testing.assert_allclose(got.reshape(2, 20), want, rtol=RTOL, atol=ATOL)


# -- hard top-k ---------------------------------------------------------------------------------


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_hard_attention_forward(memory_efficient):
    rng = np.random.default_rng(14)
    q, k, v = rand(rng, 2, 9, 4), rand(rng, 2, 11, 4), rand(rng, 2, 11, 3)
    out = ops.hard_attention(q, k, v, top_k=3, memory_efficient=memory_efficient, query_chunk_size=4)
    want = np.zeros((2, 9, 3))
    for n in range(2):
        for i in range(9):
            s = k[n] @ q[n, i] / 2.0
            top = np.argsort(-s)[:3]
            want[n, i] = softmax(s[top]) @ v[n, top]
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


def test_hard_attention_straight_through_gradient():
    rng = np.random.default_rng(15)
    q, k, v = rand(rng, 1, 5, 4), rand(rng, 1, 8, 4), rand(rng, 1, 8, 3)
    g_hard = jax.grad(lambda v: ops.hard_attention(q, k, v, top_k=2).sum())(v)
    g_soft = jax.grad(lambda v: ops.dot_product_attention(q, k, v).sum())(v)
    # d out / d v is the forward weight matrix: sparse for hard attention
    assert (np.asarray(g_hard) != 0).any(axis=-1).sum() <= 5 * 2
    gq_hard = jax.grad(lambda q: (ops.hard_attention(q, k, v, top_k=2) * v[:, :5]).sum())(q)
    assert np.isfinite(gq_hard).all() and np.abs(gq_hard).sum() > 0
    assert not np.allclose(g_hard, g_soft)
    with pytest.raises(ValueError, match="top_k"):
        ops.hard_attention(q, k, v, top_k=9)


# -- temporal -----------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_temporal_attention(causal):
    rng = np.random.default_rng(16)
    q, k, v = rand(rng, 2, 4, 3, 2, 5), rand(rng, 2, 4, 3, 2, 5), rand(rng, 2, 4, 3, 2, 6)
    out = np.asarray(ops.temporal_attention(q, k, v, causal=causal))
    for n, y, x, t in np.ndindex(2, 3, 2, 4):
        s = k[n, :, y, x] @ q[n, t, y, x] / np.sqrt(5)
        if causal:
            s = np.where(np.arange(4) <= t, s, -np.inf)
        np.testing.assert_allclose(out[n, t, y, x], softmax(s) @ v[n, :, y, x], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("size", [(7, 9), (33, 40), (16, 16), (5, 61)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_bilinear_equals_pytorch_interpolate(size, align_corners):
    """Up and down, both corner conventions, against ``F.interpolate`` in float64 (no
    antialiasing on either side); tolerance 1e-6 absolute on values of order 1."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((2, 16, 20, 3)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.tensor(x).permute(0, 3, 1, 2).double(), size=size, mode="bilinear",
        align_corners=align_corners).permute(0, 2, 3, 1).numpy()
    got = np.asarray(ops.resize_bilinear(jnp.asarray(x), size, align_corners=align_corners))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(7, 9), (32, 40), (16, 20), (5, 61), (33, 41), (13, 3)])
def test_resize_nearest_equals_pytorch_interpolate(size):
    """Up (2x exactly and otherwise) and down, against ``F.interpolate(mode="nearest")``:
    the same pixels, exactly."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).standard_normal((2, 16, 20, 3)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.tensor(x).permute(0, 3, 1, 2), size=size, mode="nearest").permute(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(ops.resize_nearest(jnp.asarray(x), size)),
                                  want.numpy())


@pytest.mark.parametrize("size", [(32, 32), (7, 9), (33, 3), (14, 9), (4, 40)])
def test_resize_bicubic_equals_pytorch_interpolate(size):
    """Up, down and one axis kept (14 x 9 from 14 x 10), against ``F.interpolate(mode="bicubic",
    align_corners=False)`` in float64 (the taps at the borders clamped); 1e-6 absolute on
    values of order 1."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((1, 14, 10, 5)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.tensor(x).permute(0, 3, 1, 2).double(), size=size, mode="bicubic",
        align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(ops.resize_bicubic(jnp.asarray(x), size)), want,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("factor", [4.0, 2.0, 0.5, 0.25])
def test_rescale_bilinear_equals_pytorch_scale_factor(factor):
    """``F.interpolate(scale_factor=...)`` on odd sizes (7 x 9 halves to 3 x 4, its coordinates
    from the factor, not the sizes' ratio), in float64; 1e-6 absolute."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(7).standard_normal((2, 7, 9, 3)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.tensor(x).permute(0, 3, 1, 2).double(), scale_factor=factor,
        mode="bilinear").permute(0, 2, 3, 1).numpy()
    got = np.asarray(ops.rescale_bilinear(jnp.asarray(x), factor))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="factor must be positive"):
        ops.rescale_bilinear(jnp.asarray(x), 0.0)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (6, 6), (5, 7)])
def test_adaptive_avg_pool_equals_pytorch(size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((2, 13, 17, 3)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(
        torch.tensor(x).permute(0, 3, 1, 2).double(), size).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(ops.adaptive_avg_pool(jnp.asarray(x), size)), want,
                               rtol=0, atol=1e-6)
