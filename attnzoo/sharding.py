"""The device mesh and the shardings every part of attnzoo uses (no TensorFlow, no Flax).

One 1-D mesh with the axis ``"data"`` spans every device of every process:
batches are sharded along it (:func:`batch_sharding`), parameters and
optimiser state are replicated (:func:`replicated`). Under ``jax.jit`` the
BatchNorm statistics of a sharded batch are then those of the global batch.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

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


def describe_layout(mesh: Mesh, batch_size: int, eval_batch_size: int, params: Any) -> str:
    """One line for a run's start: the mesh's axes and sizes, the devices and processes, the
    per-device batches, and how parameters (and so optimiser state) and batches are laid out
    (read from ``params``' own shardings)."""
    devices = mesh.devices.size
    axes = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
    specs = collections.Counter(
        str(leaf.sharding.spec) if isinstance(leaf.sharding, NamedSharding)
        else type(leaf.sharding).__name__ for leaf in jax.tree.leaves(params))
    layout = ("replicated on every device" if set(specs) == {str(PartitionSpec())} else
              "sharded " + ", ".join(f"{spec} ({n} arrays)" for spec, n in specs.items()))
    platform = mesh.devices.flat[0].platform
    return (f"mesh ({axes}) over {devices} {platform} device(s) of {jax.process_count()} "
            f"process(es); per-device batch {batch_size // devices} (global {batch_size}), "
            f"evaluation {eval_batch_size // devices} (global {eval_batch_size}); parameters and "
            f"optimizer state {layout}; batches split along {DATA_AXIS!r}")


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
