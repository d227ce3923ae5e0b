"""Datasets and input pipelines. The only package of attnzoo that imports TensorFlow,
and only when one of these functions is called (``import attnzoo.data`` is cheap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnzoo.data.sharding import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize_image,
    global_batch,
    local_batch_size,
    normalize_image,
    prefetch_to_mesh,
)

BUILDERS = ("context_shapes",)


def builder(name: str, data_dir: str | Path | None = None, **kwargs: Any):
    """The TFDS builder of an attnzoo dataset (``"context_shapes"``), not yet prepared.

    ``data_dir`` defaults to TFDS's own (``~/tensorflow_datasets``).
    """
    from attnzoo._checks import check_choice

    check_choice(name, BUILDERS, "name")
    from attnzoo.data.builders import ContextShapes

    return ContextShapes(data_dir=None if data_dir is None else str(data_dir), **kwargs)


__all__ = ["BUILDERS", "IMAGENET_MEAN", "IMAGENET_STD", "builder", "denormalize_image",
           "global_batch", "local_batch_size", "normalize_image", "prefetch_to_mesh"]
