"""Write a PNG grid of context_shapes images beside their coloured masks.

    python examples/show_context_shapes.py --out docs/context_shapes.png

Images come straight from the generator (no TFDS preparation needed).
Mask colours: ``context_shapes.CLASS_COLOURS`` (background black, alpha orange,
beta green, gamma blue, marker white), as in training's ``predictions.png`` and
``python -m attnzoo.predict``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from attnzoo.data import context_shapes as cs

MASK_COLOURS = np.array(cs.CLASS_COLOURS, np.uint8)


def grid(n: int, seed: int) -> np.ndarray:
    rows = []
    for i in range(n):
        image, mask, _ = cs.render(seed, 1, i)
        pad = np.full((cs.SIZE, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([image, pad, MASK_COLOURS[mask]], axis=1))
    half = (n + 1) // 2
    left, right = rows[:half], rows[half:] + [np.zeros_like(rows[0])] * (2 * half - n)
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    column = lambda rs: np.concatenate([x for r in rs for x in (r, sep)][:-1], axis=0)  # noqa: E731
    gap = np.full((column(left).shape[0], 12, 3), 255, np.uint8)
    return np.concatenate([column(left), gap, column(right)], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/context_shapes.png")
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=20261122)
    args = parser.parse_args()
    import tensorflow as tf  # PNG encoding; attnzoo.data is where TensorFlow may be used

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(tf.io.encode_png(grid(args.n, args.seed)).numpy())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
