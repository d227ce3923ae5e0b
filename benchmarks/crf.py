"""Time and peak memory per image of the dense CRF: exact chunked sums, permutohedral lattice
and the authors' C++ densecrf.

``ops.dense_crf`` with DeepLab's parameters (10 mean-field iterations, appearance + smoothness
kernels) on a 21-class (VOC) image-like input: three flat-coloured regions with noise, logits
right on most pixels. Each (size, method) runs in a fresh process: the first call (compilation
included) measures the resident memory one call adds (``common.execution_peak_bytes``), then the
median time of repeated calls. The exact form costs
O(N^2) per iteration (a 512x512 iteration is 256 times a 128x128 one): it runs only up to
``--dense-max-pixels``. ``densecrf`` is pydensecrf2 (Krähenbühl's C++, one thread) with the same
parameters and unary, timed from building its model to its 10th iteration; its memory is the
process's resident high-water mark added by that. The lattice's labels are compared with the
exact form's and densecrf's on the same input.

    python benchmarks/crf.py                        # 128x128, 512x512, 512x1024, 1024x2048
    python benchmarks/crf.py --sizes 32x32,64x48 --repeats 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    execution_peak_bytes,
    host_peak_bytes,
    machine,
    parse_size,
    table,
    time_fn,
)

from attnzoo import ops  # noqa: E402

NUM_CLASSES = 21


def inputs(h: int, w: int) -> tuple[jax.Array, jax.Array]:
    """An image-like ``(1, h, w, 3)`` RGB input (integer levels) and ``(1, h, w, 21)`` logits."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    region = np.where((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2, 1,
                      np.where((xx > 2 * w / 3) & (yy > h / 3), 2, 0))
    colours = np.array([(40, 60, 200), (220, 40, 30), (30, 200, 60)], np.float32)
    image = np.clip(colours[region] + rng.normal(0, 8, (h, w, 3)), 0, 255).round()  # 8-bit
    logits = rng.normal(0, 1.2, (h, w, NUM_CLASSES)) + 1.0 * np.eye(NUM_CLASSES)[region]
    return jnp.asarray(image[None], jnp.float32), jnp.asarray(logits[None], jnp.float32)


def _densecrf(logits: np.ndarray, image: np.ndarray) -> np.ndarray:
    """densecrf's Q ``(L, N)`` for one ``(H, W, L)`` logits / ``(H, W, 3)`` image, DeepLab's
    parameters (``pydensecrf2``, imported here: it is the crf extra)."""
    import pydensecrf.densecrf as dcrf

    h, w, num = logits.shape
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    params = ops.DEEPLAB_CRF
    crf = dcrf.DenseCRF2D(w, h, num)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(p).reshape(-1, num).T, np.float32))
    crf.addPairwiseGaussian(sxy=params.theta_gamma, compat=params.w_smoothness)
    crf.addPairwiseBilateral(sxy=params.theta_alpha, srgb=params.theta_beta,
                             rgbim=np.ascontiguousarray(image, np.uint8),
                             compat=params.w_appearance)
    return np.array(crf.inference(params.iterations))


def measure(h: int, w: int, method: str, repeats: int, labels_file: str) -> dict:
    """One (size, method) in this process: seconds (first call and median), peak bytes; the
    labels go to ``labels_file`` (``.npy``)."""
    image, logits = inputs(h, w)
    if method == "densecrf":
        lg, im = np.asarray(logits[0], np.float64), np.asarray(image[0])
        start = time.perf_counter()
        peak = host_peak_bytes(lambda: _densecrf(lg, im))
        first = time.perf_counter() - start
        seconds = time_fn(lambda: _densecrf(lg, im), repeats=repeats, warmup=0)
        np.save(labels_file, _densecrf(lg, im).argmax(0).reshape(h, w))
        return {"first": first, "seconds": seconds, "peak": peak}
    fn = jax.jit(lambda lg, im: ops.dense_crf(lg, im, method=method))
    start = time.perf_counter()
    compiled = fn.lower(logits, image).compile()
    peak = execution_peak_bytes(compiled, logits, image)
    first = time.perf_counter() - start
    seconds = time_fn(lambda: compiled(logits, image), repeats=repeats, warmup=0)
    np.save(labels_file, np.asarray(compiled(logits, image).argmax(-1))[0])
    return {"first": first, "seconds": seconds, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128x128,512x512,512x1024,1024x2048")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-max-pixels", type=int, default=128 * 128,
                        help="the largest image (pixels) the exact form runs on")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        h, w, method, labels_file = args.one.split(",")
        print(json.dumps(measure(int(h), int(w), method, args.repeats, labels_file)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes.split(","):
            h, w = parse_size(text, "--sizes")
            labels = {}
            for method in ("dense", "lattice", "densecrf"):
                skip = ("--dense-max-pixels" if method == "dense" and h * w > args.dense_max_pixels
                        else "pydensecrf2 is not installed: the crf extra"
                        if method == "densecrf" and not importlib.util.find_spec("pydensecrf")
                        else None)
                if skip:
                    rows.append([f"{h}x{w}", method, f"not run ({skip})", "", "", "", ""])
                    continue
                labels_file = str(Path(tmp) / f"{h}x{w}_{method}.npy")
                out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats),
                                      "--one", f"{h},{w},{method},{labels_file}"],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                labels[method] = np.load(labels_file)
                rows.append([f"{h}x{w}", method, f"{r['seconds']:.3f}", f"{r['first']:.1f}",
                             f"{r['peak'] / 2**20:.0f}", "", ""])
            lattice_row = next(row for row in rows[-3:] if row[1] == "lattice")
            for column, other in ((5, "dense"), (6, "densecrf")):
                if other in labels:
                    agree = np.mean(labels[other] == labels["lattice"])
                    lattice_row[column] = f"{100 * agree:.2f}%"
    print(machine())
    print(table(["size", "method", "seconds / image", "first call s", "peak MiB",
                 "lattice labels = exact", "lattice labels = densecrf"], rows))


if __name__ == "__main__":
    main()
