"""Pictures: class palettes, colour masks, overlays, attention heat maps, PNG files (numpy + Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Cityscapes' 19 train-id colours (the dataset's own), used for any 19-class model.
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
IGNORE_COLOUR = (0, 0, 0)


def palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours: Cityscapes' for 19 classes, otherwise the PASCAL
    VOC bit-interleaving scheme (class 0 black, then distinct colours)."""
    if num_classes == len(CITYSCAPES_PALETTE):
        return np.array(CITYSCAPES_PALETTE, np.uint8)
    colours = np.zeros((num_classes, 3), np.uint8)
    for c in range(num_classes):
        label, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (label & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        colours[c] = (r, g, b)
    return colours


def colorize(mask: np.ndarray, num_classes: int, ignore_index: int = 255, *,
             colours: np.ndarray | Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Class ids ``(H, W)`` -> RGB ``(H, W, 3)`` uint8 in ``colours`` (``(num_classes, 3)``;
    default :func:`palette`, a dataset's own from ``attnzoo.data.spec(name).class_colours``);
    ``ignore_index`` (and any id outside the classes) drawn black."""
    mask = np.asarray(mask)
    colours = palette(num_classes) if colours is None else np.asarray(colours, np.uint8)
    if colours.shape != (num_classes, 3):
        raise ValueError(f"colours has shape {colours.shape}; expected ({num_classes}, 3)")
    valid = (mask >= 0) & (mask < num_classes) & (mask != ignore_index)
    out = np.zeros((*mask.shape, 3), np.uint8)
    out[valid] = colours[mask[valid]]
    return out


def overlay(image: np.ndarray, mask_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an RGB uint8 image with a colour mask of the same size."""
    if image.shape != mask_rgb.shape:
        raise ValueError(f"image {image.shape} and mask {mask_rgb.shape} must have one shape")
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * mask_rgb.astype(np.float32)
    return mixed.round().astype(np.uint8)


def heatmap(values: np.ndarray) -> np.ndarray:
    """A 2-D array scaled to [0, 1] and drawn dark blue -> red -> yellow, ``(H, W, 3)`` uint8."""
    v = np.asarray(values, np.float64)
    lo, hi = np.nanmin(v), np.nanmax(v)
    t = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    stops = np.array([(20, 20, 80), (40, 80, 200), (220, 50, 40), (255, 230, 60)], np.float64)
    pos = t * (len(stops) - 1)
    i = np.clip(pos.astype(int), 0, len(stops) - 2)
    f = (pos - i)[..., None]
    return ((1 - f) * stops[i] + f * stops[i + 1]).round().astype(np.uint8)


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(h, w, ...)`` to ``size`` (for small maps shown large)."""
    h, w = image.shape[:2]
    rows = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    cols = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    return image[rows][:, cols]


def grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tile equally sized RGB uint8 pictures into one, with white gaps."""
    h, w = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + gap) - gap, ncols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, pic in enumerate(row):
            if pic.shape[:2] != (h, w):
                raise ValueError(f"picture ({i}, {j}) is {pic.shape[:2]}; the grid's are {(h, w)}")
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = pic
    return out


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB (or 2-D grey) uint8 array as PNG, creating the folder."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return path


# PIL modes whose own conversion to RGB is right (alpha dropped, palette / CMYK mapped)
_RGB_CONVERTIBLE = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
                    "YCbCr", "LAB", "HSV")
# integer grey modes read as 16-bit (PIL opens 16-bit PNG / TIFF greys as these)
_GREY_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb8(image: Any, name: str = "image") -> np.ndarray:
    """A PIL image as RGB ``(H, W, 3)`` uint8, correctly for every mode PIL reads.

    8-bit modes (1, L, LA, P, RGB, RGBA, CMYK, ...) convert as PIL does (alpha
    dropped). 16-bit greys (``I;16*``, and ``I``, which PIL uses for 16-bit
    files) are scaled to 8 bits (``round(v / 257)``): PIL's own conversion
    would clip them to white. Others (``F``: 32-bit float) have no 8-bit
    reading and are refused, as are ``I`` values outside 0..65535.

    Raises:
      ValueError naming ``name`` and the mode.
    """
    mode = image.mode
    if mode in _RGB_CONVERTIBLE:
        return np.asarray(image.convert("RGB"), np.uint8)
    if mode in _GREY_16:
        grey = np.asarray(image).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ValueError(f"{name}: mode {mode} values {grey.min()}..{grey.max()} are not "
                             f"16-bit; convert it to 8-bit RGB first")
        return np.repeat(((grey + 128) // 257).astype(np.uint8)[..., None], 3, axis=-1)
    raise ValueError(f"{name}: PIL image mode {mode!r} has no 8-bit RGB reading (modes read: "
                     f"{', '.join(_RGB_CONVERTIBLE + _GREY_16)}); convert it to 8-bit RGB first")


def load_image(path: str | Path) -> np.ndarray:
    """An image file as RGB ``(H, W, 3)`` uint8 (:func:`to_rgb8`); ValueError naming the file
    if unreadable or of a mode without an 8-bit reading."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return to_rgb8(im, f"image {path}")
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
