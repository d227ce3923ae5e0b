"""Image normalisation of the input pipelines (ImageNet statistics, as mmsegmentation's
``data_preprocessor``); numpy only, so inference code can use it without TensorFlow."""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` -> float32 normalised with the ImageNet mean / std (as the pipelines)."""
    return ((np.asarray(image, np.float32) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def denormalize_image(image: np.ndarray) -> np.ndarray:
    """The inverse of :func:`normalize_image`, clipped to uint8."""
    return np.clip(np.asarray(image) * IMAGENET_STD + IMAGENET_MEAN, 0, 255).round().astype(np.uint8)
