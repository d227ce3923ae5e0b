"""Per-process batches -> global ``jax.Array``s sharded over the mesh's data axis (no TensorFlow)."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` -> float32 normalised with the ImageNet mean / std (as the pipelines)."""
    return ((np.asarray(image, np.float32) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def denormalize_image(image: np.ndarray) -> np.ndarray:
    """The inverse of :func:`normalize_image`, clipped to uint8."""
    return np.clip(np.asarray(image) * IMAGENET_STD + IMAGENET_MEAN, 0, 255).round().astype(np.uint8)


def local_batch_size(global_batch_size: int, mesh: Mesh, axis: str = "data") -> int:
    """This process's share of the global batch; ValueError unless the devices divide it."""
    devices = mesh.shape[axis]
    if global_batch_size <= 0 or global_batch_size % devices:
        raise ValueError(
            f"batch_size={global_batch_size} must be a positive multiple of the {devices} devices "
            f"on mesh axis {axis!r}"
        )
    return global_batch_size // jax.process_count()


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, axis: str = "data"
                 ) -> dict[str, jax.Array]:
    """Assemble each process's rows into global arrays sharded along ``axis`` (batch dim)."""
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def prefetch_to_mesh(batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, size: int = 2,
                     axis: str = "data") -> Iterator[dict[str, jax.Array]]:
    """Yield global batches, keeping ``size`` of them already transferred to the devices."""
    queue: collections.deque = collections.deque()
    for local in batches:
        queue.append(global_batch(local, mesh, axis))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
