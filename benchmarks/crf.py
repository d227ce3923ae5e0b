"""Time and peak memory per image of the dense CRF: exact chunked sums vs permutohedral lattice.

``ops.dense_crf`` with DeepLab's parameters (10 mean-field iterations, appearance + smoothness
kernels) on a 21-class (VOC) image-like input: three flat-coloured regions with noise, logits
right on most pixels. Each (size, method) runs in a fresh process that compiles, then measures
the resident memory one call adds (``common.execution_peak_bytes``) and the median time of
repeated calls. The exact form costs O(N^2) per iteration (a 512x512 iteration is 256 times a
128x128 one): it runs only up to ``--dense-max-pixels``. The lattice's labels are compared with
the exact form's where both ran on the same input.

    python benchmarks/crf.py                                   # 128x128, 512x512, 512x1024
    python benchmarks/crf.py --sizes 32x32,64x48 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import execution_peak_bytes, machine, parse_size, table, time_fn  # noqa: E402

from attnzoo import ops  # noqa: E402

NUM_CLASSES = 21


def inputs(h: int, w: int) -> tuple[jax.Array, jax.Array]:
    """An image-like ``(1, h, w, 3)`` RGB input and ``(1, h, w, 21)`` logits."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    region = np.where((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2, 1,
                      np.where((xx > 2 * w / 3) & (yy > h / 3), 2, 0))
    colours = np.array([(40, 60, 200), (220, 40, 30), (30, 200, 60)], np.float32)
    image = np.clip(colours[region] + rng.normal(0, 8, (h, w, 3)), 0, 255)
    logits = rng.normal(0, 1.2, (h, w, NUM_CLASSES)) + 1.0 * np.eye(NUM_CLASSES)[region]
    return jnp.asarray(image[None], jnp.float32), jnp.asarray(logits[None], jnp.float32)


def measure(h: int, w: int, method: str, repeats: int) -> dict:
    """One (size, method) in this process: seconds, peak bytes and (small sizes) the labels."""
    image, logits = inputs(h, w)
    fn = jax.jit(lambda lg, im: ops.dense_crf(lg, im, method=method))
    compiled = fn.lower(logits, image).compile()
    peak = execution_peak_bytes(compiled, logits, image)
    seconds = time_fn(lambda: compiled(logits, image), repeats=repeats, warmup=0)
    labels = np.asarray(compiled(logits, image).argmax(-1))
    return {"seconds": seconds, "peak": peak, "labels": labels.ravel().tolist()
            if h * w <= 128 * 128 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128x128,512x512,512x1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-max-pixels", type=int, default=128 * 128,
                        help="the largest image (pixels) the exact form runs on")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        h, w, method = args.one.split(",")
        print(json.dumps(measure(int(h), int(w), method, args.repeats)))
        return
    rows = []
    for text in args.sizes.split(","):
        h, w = parse_size(text, "--sizes")
        results = {}
        for method in ("dense", "lattice"):
            if method == "dense" and h * w > args.dense_max_pixels:
                rows.append([f"{h}x{w}", method, "not run (--dense-max-pixels)", "", ""])
                continue
            out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats),
                                  "--one", f"{h},{w},{method}"],
                                 capture_output=True, text=True, check=True)
            results[method] = r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append([f"{h}x{w}", method, f"{r['seconds']:.3f}", f"{r['peak'] / 2**20:.0f}",
                         ""])
        if len(results) == 2 and results["dense"]["labels"] is not None:
            agree = np.mean(np.equal(results["dense"]["labels"], results["lattice"]["labels"]))
            rows[-1][-1] = f"{100 * agree:.2f}%"
    print(machine())
    print(table(["size", "method", "seconds / image", "peak MiB", "labels = exact"], rows))


if __name__ == "__main__":
    main()
