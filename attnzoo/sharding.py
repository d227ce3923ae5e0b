"""The device mesh and the shardings every part of attnzoo uses (no TensorFlow, no Flax).

One 1-D mesh with the axis ``"data"`` spans every device of every process:
batches are sharded along it (:func:`batch_sharding`), parameters and
optimiser state are replicated (:func:`replicated`). Under ``jax.jit`` the
BatchNorm statistics of a sharded batch are then those of the global batch.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``("data",)`` mesh over ``devices`` (default: all devices of every process)."""
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over the mesh's ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> int:
    """This process's share of the global batch; ValueError naming ``field`` unless the mesh's
    devices divide it."""
    devices = mesh.shape[DATA_AXIS]
    if global_batch_size <= 0 or global_batch_size % devices:
        raise ValueError(
            f"{field}={global_batch_size} must be a positive multiple of the {devices} devices "
            f"on mesh axis {DATA_AXIS!r}"
        )
    return global_batch_size // jax.process_count()


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows into global arrays sharded along the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def prefetch_to_mesh(batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, size: int = 2
                     ) -> Iterator[dict[str, jax.Array]]:
    """Yield global batches, keeping ``size`` of them already transferred to the devices."""
    queue: collections.deque = collections.deque()
    for local in batches:
        queue.append(global_batch(local, mesh))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
