r"""Export a run's model as a serialized StableHLO program (``jax.export``) that takes uint8
RGB images and returns logits, weights and input normalisation inside.

    python -m attnzoo.export --workdir runs/danet --out danet.stablehlo --size 512x1024
    python -m attnzoo.export --workdir runs/danet --out danet_b4.stablehlo --size 512x1024 --batch 4

The program's input is ``(batch, H, W, 3)`` uint8 RGB (the batch symbolic unless ``--batch N``;
``H`` and ``W`` the ``--size``: the graphs tried (FCN, DANet, SegFormer) take no symbolic image size, their resizes
computing their taps from static sizes), its output the logits ``(batch, H, W, classes)``
float32 of the model's main head at the input's size (no test resize: feed images at the
size the model should see).
Reload and run it with JAX alone:

    from attnzoo.export import load_stablehlo
    run = load_stablehlo("danet.stablehlo")
    logits = run(images_uint8)

``tests/test_export.py`` exports a model of every head family (slow set).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import _cli


def export_stablehlo(model: Any, variables: Any, config: Any, *, size: tuple[int, int],
                     batch: int | None = None) -> bytes:
    """The serialized ``jax.export`` program of ``model`` with ``variables`` (constants): uint8
    RGB ``(batch, *size, 3)`` -> logits ``(batch, *size, classes)``, normalised inside with
    ``config.model.pixel_mean`` / ``pixel_std``, under ``config.conv_implementation``;
    ``batch`` ``None``: a symbolic batch dimension.

    Raises:
      ValueError for a non-positive size or batch.
    """
    from attnzoo import ops
    from attnzoo._checks import check_pair

    h, w = check_pair(size, "size")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be positive; got {batch}")
    mean = jnp.asarray(config.model.pixel_mean, jnp.float32)
    std = jnp.asarray(config.model.pixel_std, jnp.float32)

    @ops.conv_implementation(config.conv_implementation)
    def logits(images: jax.Array) -> jax.Array:
        x = (images.astype(jnp.float32) - mean) / std
        return model.apply(variables, x)["out"].astype(jnp.float32)

    shape = jax.export.symbolic_shape(f"b, {h}, {w}, 3") if batch is None else (batch, h, w, 3)
    exported = jax.export.export(jax.jit(logits))(jax.ShapeDtypeStruct(shape, jnp.uint8))
    return bytes(exported.serialize())


def load_stablehlo(path_or_bytes: str | Path | bytes) -> Callable[[Any], jax.Array]:
    """A function of uint8 RGB images running an exported program (a file or its bytes)."""
    blob = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    exported = jax.export.deserialize(bytearray(blob))
    return lambda images: exported.call(np.asarray(images, np.uint8))


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    if not (h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise ValueError(f"--size takes HxW (e.g. 512x1024); got {text!r}")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a trained or converted run")
    parser.add_argument("--out", required=True, help="the file to write (a new one)")
    parser.add_argument("--format", choices=("stablehlo",), default="stablehlo")
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--size", required=True, help="the image size HxW")
    parser.add_argument("--batch", type=int, default=None,
                        help="fixed batch size (default: symbolic)")
    parser.add_argument("--memory-efficient", action="store_true",
                        help="the memory-bounded attention (exact) in the exported graph")
    args = parser.parse_args(argv)
    from attnzoo._checks import check_writable_folder
    from attnzoo.engine.checkpoint import restore

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"--out {out} exists; give a new file")
    check_writable_folder(out.parent, "--out")
    size = _size(args.size)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be positive; got {args.batch}")
    model, variables, config = restore(
        args.workdir, step=args.step,
        config_overrides={"model.memory_efficient": args.memory_efficient})
    blob = export_stablehlo(model, variables, config, size=size, batch=args.batch)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(out)
    print(f"wrote {config.model.name} as StableHLO ({len(blob) / 2**20:.1f} MiB) to {out}")
    return out


if __name__ == "__main__":
    _cli.run(main)
