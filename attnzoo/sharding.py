"""The device mesh and the shardings every part of attnzoo uses (no TensorFlow, no Flax).

One 2-D mesh with the axes ``("data", "fsdp")`` spans every device of every process
(:func:`make_mesh`; ``config.mesh`` gives the sizes). Batches are split over both axes
(:func:`batch_sharding`). Parameters, BatchNorm statistics and optimiser state are replicated
along ``data`` and, when ``fsdp`` > 1, split along ``fsdp`` (fully sharded data parallelism, as
big_vision's ``fsdp`` rule and PyTorch's FSDP): each array along its largest dimension that the
``fsdp`` size divides, unless a rule names another layout (:func:`array_spec`, the one place
these rules live). Under ``jax.jit`` XLA gathers a sharded parameter where it is used and
reduce-scatters its gradient, and the BatchNorm statistics of a sharded batch are those of the
global batch: the step computes what one device would.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
# arrays smaller than this (elements) stay replicated by default: their gathers would cost
# more than the memory they free (norms, biases, BatchNorm statistics)
MIN_SHARD_SIZE = 2 ** 16
# a rule: (regular expression searched in an array's path "params/backbone/.../kernel", its
# layout: one mesh axis name or None per leading dimension; () replicates it)
Rule = tuple[str, Sequence[str | None]]


def make_mesh(devices: Sequence[jax.Device] | None = None, *, data: int | None = None,
              fsdp: int = 1) -> Mesh:
    """A ``("data", "fsdp")`` mesh over ``devices`` (default: all devices of every process):
    ``fsdp`` devices share each parameter's parts (the inner, fastest-connected axis),
    ``data`` (default: the devices left) such groups hold copies. ValueError naming
    ``mesh.fsdp`` / ``mesh.data`` unless their product is the number of devices."""
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if not (isinstance(fsdp, int) and fsdp > 0 and n % fsdp == 0):
        raise ValueError(f"mesh.fsdp={fsdp!r} must be a positive integer dividing the {n} "
                         f"devices")
    if data is None:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh.data x mesh.fsdp = {data} x {fsdp} must equal the {n} devices")
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=auto, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (metrics; parameters when ``fsdp`` is 1)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over every axis of the mesh."""
    axes = tuple(mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes[0] if len(axes) == 1 else axes))


def local_batch_size(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> int:
    """This process's share of the global batch; ValueError naming ``field`` unless the mesh's
    devices divide it."""
    devices = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % devices:
        raise ValueError(
            f"{field}={global_batch_size} must be a positive multiple of the {devices} devices "
            f"of the mesh ({_axes(mesh)})"
        )
    return global_batch_size // jax.process_count()


def _axes(mesh: Mesh) -> str:
    return ", ".join(f"{name}={size}" for name, size in mesh.shape.items())


def array_spec(path: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[Rule] = (),
               min_size: int = MIN_SHARD_SIZE) -> PartitionSpec:
    """How the array at ``path`` (``"params/backbone/.../kernel"``) of ``shape`` is laid out.

    The first rule whose expression ``re.search``-es ``path`` gives its layout; without one, an
    array of at least ``min_size`` elements is split along ``fsdp`` on its largest dimension
    that the axis size divides (the last of equal ones: a kernel's output channels), any other
    array replicated. A mesh without an ``fsdp`` axis, or with one of size 1, replicates all.
    ValueError naming the rule if its layout names an axis the mesh lacks, has more entries
    than the array dimensions, or does not divide the dimension it splits."""
    for pattern, layout in rules:
        if re.search(pattern, path):
            layout = tuple(layout)
            if len(layout) > len(shape) or any(
                    a is not None and (a not in mesh.shape or shape[i] % mesh.shape[a])
                    for i, a in enumerate(layout)):
                raise ValueError(
                    f"mesh.rules: {pattern!r} -> {layout} does not fit {path} of shape "
                    f"{tuple(shape)} on the mesh ({_axes(mesh)}): one mesh axis or None per "
                    f"leading dimension, each axis dividing its dimension")
            return PartitionSpec(*layout)
    size = mesh.shape.get(FSDP_AXIS, 1)
    if size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    fits = [i for i, d in enumerate(shape) if d % size == 0]
    if not fits:
        return PartitionSpec()
    dim = max(reversed(fits), key=lambda i: shape[i])  # the largest; the last of equal ones
    return PartitionSpec(*(FSDP_AXIS if i == dim else None for i in range(dim + 1)))


def path_name(path: Sequence[Any]) -> str:
    """A pytree key path as ``"params/backbone/0/kernel"`` (dict keys, attribute names and
    indices alike)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[Rule] = (),
                   min_size: int = MIN_SHARD_SIZE, prefix: str = "") -> Any:
    """A :class:`NamedSharding` for each array of ``tree`` (arrays or ``ShapeDtypeStruct``),
    by :func:`array_spec` of its path (after ``prefix``)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(mesh, array_spec(prefix + path_name(p), x.shape, mesh, rules,
                                                    min_size)), tree)


def describe_layout(mesh: Mesh, batch_size: int, eval_batch_size: int, params: Any) -> str:
    """One line for a run's start: the mesh's axes and sizes, the devices and processes, the
    per-device batches, and how parameters (and so optimiser state) and batches are laid out
    (read from ``params``' own shardings)."""
    devices = mesh.devices.size
    leaves = jax.tree.leaves(params)
    split = [x for x in leaves if not x.sharding.is_fully_replicated]
    if not split:
        layout = "replicated on every device"
    else:
        share = sum(x.size for x in split) / max(1, sum(x.size for x in leaves))
        layout = (f"split over {FSDP_AXIS!r} ({len(split)} of {len(leaves)} arrays, "
                  f"{100 * share:.1f}% of the values; the rest replicated)")
    platform = mesh.devices.flat[0].platform
    return (f"mesh ({_axes(mesh)}) over {devices} {platform} device(s) of {jax.process_count()} "
            f"process(es); per-device batch {batch_size // devices} (global {batch_size}), "
            f"evaluation {eval_batch_size // devices} (global {eval_batch_size}); parameters and "
            f"optimizer state {layout}; batches split along {tuple(mesh.axis_names)}")


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
