"""Pixel normalisation: the mean / std a model expects of its input (ImageNet's, as
mmsegmentation's ``data_preprocessor``), and the maps between uint8 RGB and normalised
images. numpy only, below every layer that needs it: the data pipelines normalise with a
run's ``config.model.pixel_mean`` / ``pixel_std``, models map their input back to RGB with the
same fields (the CRF), and inference code uses them without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize_image(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` -> float32 ``(x - mean) / std`` (as the pipelines)."""
    return ((np.asarray(image, np.float32) - mean) / std).astype(np.float32)


def denormalize_image(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """The inverse of :func:`normalize_image`, clipped to uint8."""
    return np.clip(np.asarray(image) * std + mean, 0, 255).round().astype(np.uint8)


def fit_size(size: Sequence[int], scale: Sequence[int] | None = None,
             canvas: Sequence[int] | None = None) -> tuple[int, int]:
    """The (h, w) an image of ``size`` (h, w) is resized to for evaluation: mmsegmentation's
    keep-ratio ``Resize`` to ``scale`` (long side at most ``scale[0]``, short side at most
    ``scale[1]``: ``r = min(scale[0] / long, scale[1] / short)``), shrunk further if needed
    to fit ``canvas`` (h, w; a canvas alone never enlarges); ``floor(side r + 0.5)`` in float64,
    as ``mmcv.imrescale``. Neither given: ``size`` unchanged."""
    h, w = (int(v) for v in size)
    r = min(scale[0] / max(h, w), scale[1] / min(h, w)) if scale is not None else 1.0
    if canvas is not None:
        r = min(r, canvas[0] / h, canvas[1] / w)
    new = (int(h * r + 0.5), int(w * r + 0.5))
    return new if canvas is None else (min(new[0], canvas[0]), min(new[1], canvas[1]))
