"""The fully connected CRF: the exact dense op against a looped float64 reference, the
permutohedral lattice against the dense op and against the authors' densecrf (pydensecrf2),
gradients by finite differences, the CRF-as-RNN block, the model option and the commands'
``--crf``."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import _cli, blocks, models, ops
from attnzoo.ops import crf as crf_ops


def image_like(h, w, seed=0):
    """An RGB image of three flat-coloured regions with sharp edges, plus noise (sigma 8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.empty((h, w, 3), np.float32)
    img[...] = (40, 60, 200)
    disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2
    box = (xx > 2 * w / 3) & (yy > h / 3)
    img[disc] = (220, 40, 30)
    img[box] = (30, 200, 60)
    region = np.where(disc, 1, np.where(box, 2, 0))
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).round(), region


def noisy_unary(region, num_labels, seed=0):
    """Logits favouring each pixel's region label by 1, plus N(0, 1.2) noise: a classifier that
    is right on most pixels and wrong on a scatter of them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.2, region.shape + (num_labels,))
    logits[..., :3] += np.eye(num_labels)[region][..., :3]
    return logits.astype(np.float32)


def loop_gaussian_sum(f, v):
    """sum_j exp(-|f_i - f_j|^2 / 2) v_j with two Python loops, float64."""
    out = np.zeros_like(v)
    for i in range(len(f)):
        for j in range(len(f)):
            out[i] += np.exp(-0.5 * np.sum((f[i] - f[j]) ** 2)) * v[j]
    return out


def loop_permutohedral_filter(f, v):
    """Adams, Baek & Davis's permutohedral filter point by point in float64, with a dict as the
    hash table (as densecrf): elevate onto H_d, the enclosing simplex from the nearest
    remainder-0 point and the ranks of the offsets, splat by barycentric weights, blur
    [1/2, 1, 1/2] along each direction in turn, slice, times 1 / (1 + 2^-d). Returns the
    filtered values and the number of distinct vertices."""
    n, d = f.shape
    scale = np.sqrt(2 / 3) * (d + 1) / np.sqrt(np.arange(1, d + 1) * np.arange(2, d + 2))
    table, splat = {}, []
    for point in f.astype(np.float64):
        cf = point * scale
        e = np.empty(d + 1)
        e[d] = -d * cf[d - 1]
        for i in range(d - 1, 0, -1):
            e[i] = cf[i:].sum() - i * cf[i - 1]
        e[0] = cf.sum()
        rem0 = np.where(np.ceil(e / (d + 1)) * (d + 1) - e < e - np.floor(e / (d + 1)) * (d + 1),
                        np.ceil(e / (d + 1)), np.floor(e / (d + 1))) * (d + 1)
        diff = e - rem0
        rank = np.array([np.sum(diff > diff[i]) + np.sum(diff[:i] == diff[i])
                         for i in range(d + 1)]) + int(round(rem0.sum() / (d + 1)))
        rem0 = rem0 + np.where(rank < 0, d + 1, 0) - np.where(rank > d, d + 1, 0)
        rank = np.where(rank < 0, rank + d + 1, np.where(rank > d, rank - d - 1, rank))
        bary = np.zeros(d + 2)
        for i in range(d + 1):
            bary[d - rank[i]] += (e[i] - rem0[i]) / (d + 1)
            bary[d + 1 - rank[i]] -= (e[i] - rem0[i]) / (d + 1)
        bary[0] += 1 + bary[d + 1]
        for k in range(d + 1):
            key = tuple(int(x) for x in np.where(rank <= d - k, rem0 + k, rem0 + k - d - 1))
            splat.append((table.setdefault(key, len(table)), bary[k]))
    values = np.zeros((len(table), v.shape[1]))
    for (vertex, weight), point in zip(splat, np.repeat(np.arange(n), d + 1)):
        values[vertex] += weight * v[point]
    keys = list(table)
    for j in range(d + 1):
        step = np.ones(d + 1, int) - (d + 1) * np.eye(d + 1, dtype=int)[j]
        old = values.copy()
        for vertex, key in enumerate(keys):
            for sign in (1, -1):
                other = table.get(tuple(int(x) for x in np.asarray(key) + sign * step))
                if other is not None:
                    values[vertex] += 0.5 * old[other]
    out = np.zeros(v.shape)
    for (vertex, weight), point in zip(splat, np.repeat(np.arange(n), d + 1)):
        out[point] += weight * values[vertex]
    return out / (1 + 2.0 ** -d), len(table)


def loop_mean_field(logits, image, iterations, w_a, ta, tb, w_s, tg, mu, normalization):
    """Krähenbühl & Koltun's mean-field update written pixel by pixel in float64."""
    h, w, num = logits.shape
    ys, xs = np.mgrid[:h, :w]
    pos = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64)
    rgb = image.reshape(-1, 3).astype(np.float64)
    feats = [np.concatenate([pos / ta, rgb / tb], -1), pos / tg]
    unary = logits.reshape(-1, num).astype(np.float64)
    unary = unary - unary.max(-1, keepdims=True)
    unary = unary - np.log(np.exp(unary).sum(-1, keepdims=True))
    cur = unary.copy()
    ones = np.ones((h * w, 1))
    norms = [loop_gaussian_sum(f, ones) for f in feats]
    for _ in range(iterations):
        q = np.exp(cur - cur.max(-1, keepdims=True))
        q /= q.sum(-1, keepdims=True)
        message = np.zeros_like(q)
        for f, n, weight in zip(feats, norms, (w_a, w_s)):
            if normalization == "symmetric":
                m = loop_gaussian_sum(f, q / np.sqrt(n)) / np.sqrt(n)
            else:
                m = loop_gaussian_sum(f, q) / n
            message += weight * m
        cur = unary - message @ mu.T
    return cur.reshape(h, w, num)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("chunk", [7, 64])
def test_dense_gaussian_sum_equals_the_loop(chunk):
    rng = np.random.default_rng(1)
    f = rng.normal(0, 1.5, (2, 37, 5)).astype(np.float32)
    v = rng.random((2, 37, 3)).astype(np.float32)
    out = ops.gaussian_filter_dense(jnp.asarray(f), jnp.asarray(v), chunk_size=chunk)
    for b in range(2):
        ref = loop_gaussian_sum(f[b].astype(np.float64), v[b].astype(np.float64))
        np.testing.assert_allclose(np.asarray(out[b]), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalization", ["symmetric", "row"])
def test_dense_mean_field_equals_the_pixel_loop(normalization):
    rng = np.random.default_rng(2)
    h, w, num = 6, 7, 4
    logits = rng.normal(0, 2, (h, w, num)).astype(np.float32)
    image = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    mu = rng.uniform(0, 1.5, (num, num)).astype(np.float32)
    w_a = rng.uniform(2, 6, num).astype(np.float32)  # per class, as CRF-as-RNN
    params = dict(iterations=3, w_appearance=w_a, theta_alpha=4.0, theta_beta=40.0,
                  w_smoothness=2.5, theta_gamma=1.5)
    ref = loop_mean_field(logits, image, 3, w_a.astype(np.float64), 4.0, 40.0, 2.5, 1.5,
                          mu.astype(np.float64), normalization)
    out = ops.dense_crf(jnp.asarray(logits)[None], jnp.asarray(image)[None], compatibility=mu,
                        method="dense", normalization=normalization, chunk_size=16, **params)
    np.testing.assert_allclose(softmax(np.asarray(out[0])), softmax(ref), atol=1e-5)
    assert (np.asarray(out[0]).argmax(-1) != logits.argmax(-1)).any()  # the CRF did something


@pytest.mark.parametrize("d, spread", [pytest.param(5, 3.0, marks=pytest.mark.slow), (5, 40.0),
                                       pytest.param(2, 4.0, marks=pytest.mark.slow)])
def test_lattice_equals_a_looped_permutohedral_filter(d, spread):
    """The lattice filter against the point-by-point permutohedral filter with a hash table
    (float64) within 1e-5 of the largest value, on a batch whose items occupy different numbers
    of vertices: the table takes the smallest of ``table_sizes`` that holds the larger count
    (plus the zero slot). The widest spread is the one whose keys do not pack into one word."""
    rng = np.random.default_rng(d)
    n = 500
    features = np.stack([rng.normal(0, spread, (n, d)), rng.normal(0, 1.0, (n, d))])
    values = rng.uniform(0, 1, (2, n, 3))
    lattice = jax.jit(ops.permutohedral_lattice)(jnp.asarray(features, jnp.float32))
    keys, _ = crf_ops._vertex_keys(jnp.asarray(features, jnp.float32))
    assert bool(jax.vmap(crf_ops._box)(keys).fits.all()) == (spread < 10)  # packed or key columns
    out = np.asarray(jax.jit(ops.lattice_filter)(lattice, jnp.asarray(values, jnp.float32)))
    counts = []
    for item in range(2):
        expected, count = loop_permutohedral_filter(features[item], values[item])
        np.testing.assert_allclose(out[item], expected, atol=1e-5 * np.abs(expected).max())
        counts.append(count)
    assert counts[0] > counts[1]
    sizes = ops.table_sizes(n, d)
    chosen = sizes[int(lattice.size_index)]
    assert chosen >= counts[0] + 1 and (chosen == sizes[0] or sizes[int(lattice.size_index) - 1]
                                        < counts[0] + 1)


def test_table_sizes_step_by_sqrt2_from_the_worst_case():
    assert ops.table_sizes(300, 5) == (1024, 1274, 1801)
    assert ops.table_sizes(10, 2) == (31,)
    sizes = ops.table_sizes(512 * 1024, 5)
    assert sizes[-1] == 512 * 1024 * 6 + 1 and len(sizes) == 13
    assert sizes[0] == -(-sizes[-1] // 64)
    assert all(1.41 < b / a < 1.42 for a, b in zip(sizes, sizes[1:]))


@pytest.mark.slow  # 8 s; the lattice against densecrf runs in the default set
def test_lattice_messages_and_labels_agree_with_the_exact_sum():
    """Row-normalised messages (values in [0, 1]): lattice vs exact within 0.05 anywhere and 0.005
    on average (measured: 0.011 / 0.0009 for the appearance kernel, 0.012 / 0.0016 for the
    smoothness kernel); final labels agree on >= 99% of pixels (measured: 100%; the noisy
    unary alone is right on 51%)."""
    image, region = image_like(48, 64)
    app, smooth = ops.crf_features(jnp.asarray(image)[None], 20.0, 13.0, 3.0)
    q = jnp.asarray(softmax(noisy_unary(region, 4)).reshape(1, -1, 4))
    ones = jnp.ones(q.shape[:2] + (1,))

    @jax.jit
    def messages(f):
        exact = ops.gaussian_filter_dense(f, q) / ops.gaussian_filter_dense(f, ones)
        lattice = ops.permutohedral_lattice(f)
        return exact, ops.lattice_filter(lattice, q) / ops.lattice_filter(lattice, ones)

    for f in (app, smooth):
        exact, approx = messages(f)
        err = np.abs(np.asarray(approx - exact))
        assert err.max() < 0.05 and err.mean() < 0.005, (err.max(), err.mean())
    logits = jnp.asarray(noisy_unary(region, 4))[None]
    img = jnp.asarray(image)[None]
    kw = dict(iterations=5, w_appearance=10.0, theta_alpha=20.0, theta_beta=13.0,
              w_smoothness=3.0, theta_gamma=3.0)
    refine = jax.jit(ops.dense_crf, static_argnames=("method", "iterations"))
    dense = np.asarray(refine(logits, img, method="dense", **kw)).argmax(-1)
    lattice = np.asarray(refine(logits, img, method="lattice", **kw)).argmax(-1)
    assert (dense == lattice).mean() >= 0.99
    unary_acc = (np.asarray(logits).argmax(-1) == region).mean()
    assert (dense == region).mean() > unary_acc + 0.1  # smoothing along the image fixes labels


def test_lattice_equals_the_authors_densecrf():
    """pydensecrf2 (Krähenbühl's densecrf: permutohedral lattice, Potts, symmetric
    normalisation): Q agrees to 1e-4 (measured 3e-6) and every label agrees."""
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is in the crf extra")
    image, region = image_like(30, 41, seed=3)
    h, w, num = 30, 41, 4
    logits = noisy_unary(region, num, seed=3)
    p = softmax(logits.astype(np.float64))
    crf = dcrf.DenseCRF2D(w, h, num)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(p).reshape(-1, num).T, np.float32))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=20, srgb=13, rgbim=np.ascontiguousarray(image, np.uint8),
                             compat=10)
    expected = np.array(crf.inference(5)).T.reshape(h, w, num)
    out = jax.jit(ops.dense_crf, static_argnames=("iterations",))(
        jnp.asarray(logits)[None], jnp.asarray(image)[None], iterations=5, w_appearance=10.0,
        theta_alpha=20.0, theta_beta=13.0, w_smoothness=3.0, theta_gamma=3.0)
    q = softmax(np.asarray(out[0]))
    np.testing.assert_allclose(q, expected, atol=1e-4)
    assert (q.argmax(-1) == expected.argmax(-1)).all()


@pytest.mark.slow  # default run time
@pytest.mark.parametrize("method", ["dense", "lattice"])
def test_block_gradients_match_finite_differences(method):
    """Directional derivatives of a scalar loss of the CRF-as-RNN layer: autodiff vs central
    differences (step 1e-2 along a random unit direction, float32): relative error < 2e-2."""
    rng = np.random.default_rng(4)
    layer = blocks.create("crf", num_classes=3, iterations=2, method=method, theta_alpha=6.0,
                          theta_beta=30.0, theta_gamma=2.0, learn_bandwidths=method == "dense")
    logits = jnp.asarray(rng.normal(0, 1, (1, 5, 4, 3)), jnp.float32)
    image = jnp.asarray(rng.uniform(0, 255, (1, 5, 4, 3)), jnp.float32)
    target = jnp.asarray(rng.normal(0, 1, (1, 5, 4, 3)), jnp.float32)
    params = jax.jit(layer.init)(jax.random.key(0), logits, image)["params"]

    def loss(p, x):
        return jnp.sum(jax.nn.softmax(layer.apply({"params": p}, x, image)) * target)

    loss = jax.jit(loss)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, logits)
    leaves = jax.tree.leaves((params, logits))
    dirs = [jnp.asarray(rng.normal(size=np.shape(x)), jnp.float32) for x in leaves]
    norm = np.sqrt(sum(float(jnp.sum(d * d)) for d in dirs))
    dirs = jax.tree.unflatten(jax.tree.structure((params, logits)), [d / norm for d in dirs])
    eps = 1e-2
    plus = jax.tree.map(lambda x, d: x + eps * d, (params, logits), dirs)
    minus = jax.tree.map(lambda x, d: x - eps * d, (params, logits), dirs)
    numeric = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
    analytic = sum(float(jnp.sum(g * d)) for g, d in
                   zip(jax.tree.leaves(grads), jax.tree.leaves(dirs)))
    assert np.isfinite(analytic)
    assert abs(numeric - analytic) <= 2e-2 * abs(numeric) + 1e-4, (numeric, analytic)
    if method == "dense":
        assert float(jnp.abs(grads[0]["log_bandwidths"]).sum()) > 0


@pytest.mark.slow  # 6 s; the block's finite-difference gradients run in the default set
def test_block_is_crf_as_rnn_at_initialisation():
    rng = np.random.default_rng(5)
    layer = blocks.create("crf", num_classes=4)
    assert "crf" in blocks.list_blocks() and isinstance(layer, blocks.DenseCRF)
    logits = jnp.asarray(rng.normal(size=(2, 9, 11, 4)), jnp.float32)
    image = jnp.asarray(rng.uniform(0, 255, (2, 9, 11, 3)), jnp.float32)
    variables = jax.jit(layer.init)(jax.random.key(0), logits, image)
    np.testing.assert_array_equal(variables["params"]["compatibility"], 1 - np.eye(4))
    out = jax.jit(layer.apply)(variables, logits, image)
    assert out.shape == logits.shape and out.dtype == jnp.float32
    # Initialised as CRF-as-RNN (row normalisation, 160 / 3 / 3, weights 5 and 3, 5 iterations).
    same = jax.jit(lambda lg, im: ops.dense_crf(
        lg, im, iterations=5, w_appearance=5.0, theta_alpha=160.0, theta_beta=3.0,
        w_smoothness=3.0, theta_gamma=3.0, normalization="row"))(logits, image)
    np.testing.assert_allclose(np.asarray(out), np.asarray(same), atol=1e-5)


@pytest.mark.slow
def test_model_option_trains_the_crf_end_to_end():
    rng = np.random.default_rng(6)
    model = models.create("fcn_r18_d8", num_classes=4, head_channels=16, aux_channels=8,
                          crf={"iterations": 2})
    x = jnp.asarray(rng.normal(size=(1, 32, 32, 3)), jnp.float32)
    mv = jax.jit(model.init)(jax.random.key(0), x)
    assert set(mv["params"]["crf"]) == {"appearance_weight", "smoothness_weight", "compatibility"}

    def loss(params):
        out, _ = model.apply({**mv, "params": params}, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(1)})
        return jnp.mean(out["out"] ** 2)

    grads = jax.jit(jax.grad(loss))(mv["params"])
    assert float(jnp.abs(grads["crf"]["compatibility"]).sum()) > 0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_bad_input_is_refused_by_name():
    logits, image = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 9, 3))
    with pytest.raises(ValueError, match="same batch and spatial size"):
        ops.dense_crf(logits, image)
    with pytest.raises(ValueError, match="theta_beta must be positive"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 3)), theta_beta=0.0)
    with pytest.raises(ValueError, match="theta_gamma must be positive"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 3)), theta_gamma=-1.0)
    with pytest.raises(ValueError, match="theta_alpha must be positive.*nan"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 3)), theta_alpha=float("nan"))
    # a NaN weight made every label background, with no error
    with pytest.raises(ValueError, match="w_appearance must be finite.*nan"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 3)), w_appearance=float("nan"))
    with pytest.raises(ValueError, match="w_smoothness must be finite.*inf"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 3)), w_smoothness=float("inf"))
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 3)), iterations=0)
    with pytest.raises(ValueError, match="method must be one of"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 3)), method="mean")
    with pytest.raises(ValueError, match="normalization must be one of"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 3)), normalization="after")
    with pytest.raises(ValueError, match="compatibility must be"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 3)), compatibility=jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="image must be RGB"):
        ops.dense_crf(logits, jnp.zeros((1, 8, 8, 1)))
    layer = blocks.create("crf", num_classes=4)
    with pytest.raises(ValueError, match="num_classes=4"):
        layer.init(jax.random.key(0), logits, jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="theta_alpha must be positive"):
        blocks.create("crf", num_classes=3, theta_alpha=0.0).init(
            jax.random.key(0), logits, jnp.zeros((1, 8, 8, 3)))


def test_crf_params_option():
    parser = argparse.ArgumentParser()
    _cli.add_crf_arguments(parser)
    args = parser.parse_args(["--crf", "--crf-params", "iterations=3,theta_alpha=80,method=dense"])
    assert _cli.crf_arguments(args) == {"iterations": 3, "theta_alpha": 80.0, "method": "dense"}
    assert _cli.crf_arguments(parser.parse_args(["--crf"])) == {}
    assert _cli.crf_arguments(parser.parse_args([])) is None
    for bad, match in ((["--crf", "--crf-params", "sigma=3"], "name=value"),
                       (["--crf", "--crf-params", "theta_beta=x"], "theta_beta takes a number"),
                       (["--crf-params", "iterations=2"], "needs --crf")):
        with pytest.raises(ValueError, match=match):
            _cli.crf_arguments(parser.parse_args(bad))


@pytest.mark.slow
def test_benchmark_script_prints_its_table():
    import subprocess
    import sys

    from helpers import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crf.py"), "--sizes",
                          "24x24,40x32", "--repeats", "1", "--dense-max-pixels", "576"],
                         capture_output=True, text=True, check=True).stdout
    assert "| 24x24 | lattice |" in out and "not run" in out and "%" in out
    assert "| 40x32 | densecrf |" in out
