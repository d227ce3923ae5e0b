"""The generator behind the built-in ``context_shapes`` dataset (numpy only).

Each 128x128 image holds, on a smooth random texture:

* a **mode marker**: a 20x20 square in one of the four corners, red in
  mode 0 and blue in mode 1;
* 2 to 4 **shapes** (square, disc, triangle) of random size (radius 7 to
  16 px) and random colour from a palette that never is the marker's red or
  blue, placed at least 24 px away from the marker.

Classes (``CLASSES``): 0 background, 1-3 the three kinds in mode 0
(``square_m0``, ``disc_m0``, ``triangle_m0``), 4-6 the three kinds in mode 1
(``square_m1``, ...), 7-8 the marker in mode 0 and 1 (``marker_m0``,
``marker_m1``: its colour, so the features at the marker must carry the
mode). A shape's class is its kind *and the image's mode*:

    class = 1 + 3 * mode + kind        (kind: 0 square, 1 disc, 2 triangle)

so a shape's pixels can only be labelled right by a model that sees the
marker, typically 50 to 110 px away: long-range context, what position,
channel and criss-cross attention exist for. A model that sees only the
shape can learn its kind but must guess the mode: it is right on half the
shape pixels at best (shape-class IoU about 1/3). The mode enters the label
additively (its evidence points the same way for every kind), so a model
that carries it across the image is rewarded from the first steps.
Images are a deterministic function of ``(seed, split, index)``.
"""

from __future__ import annotations

import numpy as np

SIZE = 128
KINDS = ("square", "disc", "triangle")
CLASSES = ("background", *(f"{kind}_m{mode}" for mode in (0, 1) for kind in KINDS),
           "marker_m0", "marker_m1")
# the classes' colours in pictures (masks, predictions): background black; mode 0's shapes
# warm (orange, yellow, pink), mode 1's cool (blue, cyan, violet); the markers light red and
# light blue
CLASS_COLOURS = ((0, 0, 0), (240, 90, 40), (250, 200, 40), (230, 50, 130), (60, 110, 240),
                 (60, 200, 200), (150, 80, 230), (255, 190, 190), (190, 210, 255))
# CLASS_OF[mode][kind] -> class id
CLASS_OF = tuple(tuple(1 + 3 * mode + kind for kind in range(len(KINDS))) for mode in (0, 1))
MARKER = 20
MARKER_COLOURS = ((220, 30, 30), (30, 30, 220))
PALETTE = ((40, 180, 60), (230, 200, 40), (150, 150, 150), (250, 140, 30), (120, 60, 160),
           (30, 170, 170), (240, 240, 240), (100, 70, 40))


def _texture(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    img = np.zeros((SIZE, SIZE, 3))
    for c in range(3):
        for _ in range(3):
            fy, fx, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    img = 90 + 25 * img + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255)


def _shape_mask(kind: str, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if kind == "square":
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    if kind == "disc":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    # triangle pointing up: below the two edges from the apex, above the base
    return (yy <= cy + r) & (yy >= cy - r) & (np.abs(xx - cx) <= (yy - (cy - r)) / 2)


def render(seed: int, split: int, index: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(image uint8 (128, 128, 3), mask uint8 (128, 128), mode)`` for one example."""
    rng = np.random.default_rng([seed, split, index])
    image = _texture(rng)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mode = int(rng.integers(2))
    corner = int(rng.integers(4))
    my = 2 if corner < 2 else SIZE - MARKER - 2
    mx = 2 if corner % 2 == 0 else SIZE - MARKER - 2
    image[my:my + MARKER, mx:mx + MARKER] = MARKER_COLOURS[mode]
    mask[my:my + MARKER, mx:mx + MARKER] = CLASSES.index(f"marker_m{mode}")
    keep_out = np.zeros((SIZE, SIZE), bool)
    keep_out[max(my - 24, 0):my + MARKER + 24, max(mx - 24, 0):mx + MARKER + 24] = True
    for _ in range(int(rng.integers(2, 5))):
        for _attempt in range(20):
            kind = int(rng.integers(3))
            r = int(rng.integers(7, 17))
            cy, cx = (int(v) for v in rng.integers(r + 1, SIZE - r - 1, size=2))
            shape = _shape_mask(KINDS[kind], cy, cx, r)
            if not (shape & (keep_out | (mask > 0))).any():
                break
        else:
            continue
        image[shape] = PALETTE[int(rng.integers(len(PALETTE)))]
        mask[shape] = CLASS_OF[mode][kind]
    return image.astype(np.uint8), mask, mode
