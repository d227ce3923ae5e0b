"""Inference modes against looped references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import inference, ops


def contextual(images):
    """A non-local toy model: logits depend on the mean of whatever crop it sees."""
    mean = images.mean(axis=(1, 2), keepdims=True)
    return jnp.concatenate([images[..., :2] + mean[..., :2], images[..., 2:] * 2 - mean[..., 2:]],
                           axis=-1)


def np_slide(images, crop, stride):
    """mmseg's ``slide_inference``: windows inside the image, cut to it, never padded."""
    b, h, w, c = images.shape
    total, count = np.zeros((b, h, w, c)), np.zeros((h, w))
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    for r in range(rows):
        for q in range(cols):
            y2, x2 = min(r * stride + crop, h), min(q * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out = np.asarray(contextual(jnp.asarray(images[:, y1:y2, x1:x2])))
            total[:, y1:y2, x1:x2] += out
            count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    return total / count[None, :, :, None]


@pytest.mark.parametrize("h,w,crop,stride", [(37, 50, 16, 10), (20, 20, 32, 21), (33, 17, 17, 8)])
def test_slide_matches_loop(h, w, crop, stride):
    images = np.random.default_rng(0).standard_normal((2, h, w, 3)).astype(np.float32)
    got = inference.slide_inference(contextual, jnp.asarray(images), crop, stride)
    np.testing.assert_allclose(got, np_slide(images, crop, stride), rtol=1e-5, atol=1e-5)


_SLIDE_PEAK = """
import sys
sys.path.insert(0, {bench!r})
import jax, jax.numpy as jnp, numpy as np
from common import execution_peak_bytes
from attnzoo.inference import slide_inference

def attention(x):  # dense attention over the window's pixels: a (B, n, n) map, n = 48 * 48
    b, h, w, c = x.shape
    q = x.reshape(b, h * w, c) @ jnp.ones((c, 16))
    return (jax.nn.softmax(q @ q.transpose(0, 2, 1), -1) @ q).reshape(b, h, w, 16)

x = jnp.asarray(np.random.default_rng(0).standard_normal((1, {size}, {size}, 3)), jnp.float32)
run = jax.jit(lambda x: slide_inference(attention, x, 48, 32)).lower(x).compile()
print(execution_peak_bytes(run, x))
"""


@pytest.mark.slow  # two fresh processes
def test_slide_memory_is_one_window_not_all_of_them():
    """Peak memory of sliding-window inference (each size in a fresh process, Linux's
    high-water mark) with a dense-attention model whose window holds a 21 MiB map: a 400x400
    image (144 windows) needs less than three maps more than a 160x160 one (25 windows; the
    summed logits grow by 8 MiB; repeated measurements of one size vary by up to 35 MiB).
    With every window's activations alive at once, as before, 100 windows took 2.1 GiB and 25
    took 0.58 GiB (measured)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    env = {**os.environ, "XLA_FLAGS": ""}  # one device (eight simulated ones add thread pools)
    peaks = {size: int(subprocess.run([sys.executable, "-c", _SLIDE_PEAK.format(
        bench=bench, size=size)], capture_output=True, text=True, check=True,
        env=env).stdout.split()[-1]) for size in (160, 400)}
    one_map = 4 * (48 * 48) ** 2
    assert peaks[400] - peaks[160] < 3 * one_map, {k: v / 2**20 for k, v in peaks.items()}


def test_multiscale_flip_averages_probabilities():
    images = jnp.asarray(np.random.default_rng(1).standard_normal((1, 24, 32, 3)), jnp.float32)
    got = inference.inference(contextual, images, scales=(0.5, 1.0, 1.5), flip=True)
    want = 0
    for s in (0.5, 1.0, 1.5):
        size = (round(24 * s), round(32 * s))
        x = images if s == 1.0 else jax.image.resize(images, (1, *size, 3), "bilinear")
        for flip in (False, True):
            lg = contextual(x[:, :, ::-1])[:, :, ::-1] if flip else contextual(x)
            lg = lg if s == 1.0 else ops.resize_bilinear(lg, (24, 32))  # mmseg: no antialiasing
            want = want + jax.nn.softmax(lg, -1)
    np.testing.assert_allclose(got, want / 6, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, rtol=1e-5)


def test_whole_and_slide_agree_for_a_pointwise_model():
    images = jnp.asarray(np.random.default_rng(2).standard_normal((1, 30, 41, 3)), jnp.float32)
    pointwise = lambda x: x * 3.0 - 1.0  # noqa: E731
    whole = inference.inference(pointwise, images)
    slide = inference.inference(pointwise, images, mode="slide", crop_size=16, stride=11)
    np.testing.assert_allclose(whole, slide, rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    images = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="mode must be one of"):
        inference.inference(contextual, images, mode="tiles")
    with pytest.raises(ValueError, match="crop_size"):
        inference.slide_inference(contextual, images, 0, 4)
    with pytest.raises(ValueError, match="scales must be positive"):
        inference.inference(contextual, images, scales=(0.0,))


@pytest.mark.parametrize("align_corners", [False, True])
def test_labels_at_original_size_are_pytorchs_resize_then_argmax(align_corners):
    """Each image's top-left ``size`` of the scores resized to its ``label_size`` by
    ``F.interpolate`` (float64), then the argmax; in row blocks of 8 (4 blocks, the last one
    partial). Labels agree on >= 99.9% of the pixels (float32 against float64 can flip a
    near-tie); measured: all."""
    torch = pytest.importorskip("torch")
    scores = np.random.default_rng(5).standard_normal((2, 24, 32, 5)).astype(np.float32)
    sizes, originals = [[20, 27], [16, 32]], [[30, 40], [17, 50]]
    got = np.asarray(inference.labels_at_original_size(
        jnp.asarray(scores), jnp.asarray(sizes), jnp.asarray(originals), (30, 64),
        align_corners=align_corners, block=8))
    assert got.shape == (2, 30, 64)
    for b, ((h, w), (ho, wo)) in enumerate(zip(sizes, originals)):
        crop = torch.tensor(scores[b, :h, :w]).permute(2, 0, 1)[None].double()
        want = torch.nn.functional.interpolate(crop, size=(ho, wo), mode="bilinear",
                                               align_corners=align_corners)[0].argmax(0).numpy()
        assert (got[b, :ho, :wo] == want[:30]).mean() >= 0.999
