r"""Export a run's model for deployment: a serialized StableHLO program (``jax.export``), a
TensorFlow SavedModel (``jax2tf``) or an ONNX model, each taking uint8 RGB images and returning
logits, the weights and the input normalisation inside.

    python -m attnzoo.export --workdir runs/danet --out danet.stablehlo --size 512x1024
    python -m attnzoo.export --workdir runs/danet --format savedmodel --out danet_sm --size 512x1024
    python -m attnzoo.export --workdir runs/danet --format onnx --out danet.onnx --size 512x1024

The input is ``(batch, H, W, 3)`` uint8 RGB, ``H`` and ``W`` the ``--size`` (the models'
resizes compute their taps from static sizes, so the image size is fixed); the output the
logits ``(batch, H, W, classes)`` float32 of the model's main head at the input's size (no
test resize: feed images at the size the model should see). The batch is symbolic unless
``--batch N``. StableHLO and SavedModel programs are lowered for CPU, CUDA and TPU
(``--platforms``).

Run them with JAX alone, TensorFlow or onnxruntime:

    from attnzoo.export import load_stablehlo
    logits = load_stablehlo("danet.stablehlo")(images_uint8)
    logits = tf.saved_model.load("danet_sm").serve(images_uint8)
    logits = onnxruntime.InferenceSession("danet.onnx").run(None, {"images": images_uint8})[0]

Which families export to which format: ``docs/models.md`` (measured by
``tests/test_export.py``, which exports every head family to all three).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import _cli

FORMATS = ("stablehlo", "savedmodel", "onnx")
PLATFORMS = ("cpu", "cuda", "tpu")


def uint8_logits(model: Any, config: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """``(variables, images) -> logits``: uint8 RGB ``(B, H, W, 3)`` normalised with
    ``config.model.pixel_mean`` / ``pixel_std``, the main head's float32 logits ``(B, H, W,
    classes)``, under ``config.conv_implementation``."""
    from attnzoo import ops

    mean = jnp.asarray(config.model.pixel_mean, jnp.float32)
    std = jnp.asarray(config.model.pixel_std, jnp.float32)

    @ops.conv_implementation(config.conv_implementation)
    def logits(variables: Any, images: jax.Array) -> jax.Array:
        x = (images.astype(jnp.float32) - mean) / std
        return model.apply(variables, x)["out"].astype(jnp.float32)

    return logits


def _input_shape(size: tuple[int, int], batch: int | None) -> tuple[Any, int, int, int]:
    """``(batch, h, w, 3)``, the batch symbolic (``b``) when ``None``; ValueError for a
    non-positive size or batch."""
    from attnzoo._checks import check_pair

    h, w = check_pair(size, "size")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be positive; got {batch}")
    return (jax.export.symbolic_shape("b")[0] if batch is None else batch, h, w, 3)


def export_stablehlo(model: Any, variables: Any, config: Any, *, size: tuple[int, int],
                     batch: int | None = None, platforms: Sequence[str] = PLATFORMS) -> bytes:
    """The serialized ``jax.export`` program of :func:`uint8_logits` with ``variables``
    (constants) for uint8 RGB ``(batch, *size, 3)``; ``batch`` ``None``: a symbolic batch
    dimension; lowered for each of ``platforms``.

    Raises:
      ValueError for a non-positive size or batch.
    """
    shape = _input_shape(size, batch)
    fn = uint8_logits(model, config)
    exported = jax.export.export(jax.jit(lambda images: fn(variables, images)),
                                 platforms=tuple(platforms))(
        jax.ShapeDtypeStruct(shape, jnp.uint8))
    return bytes(exported.serialize())


def load_stablehlo(path_or_bytes: str | Path | bytes) -> Callable[[Any], jax.Array]:
    """A function of uint8 RGB images running an exported program (a file or its bytes)."""
    blob = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    exported = jax.export.deserialize(bytearray(blob))
    return lambda images: exported.call(np.asarray(images, np.uint8))


def export_savedmodel(model: Any, variables: Any, config: Any, out: str | Path, *,
                      size: tuple[int, int], batch: int | None = None,
                      platforms: Sequence[str] = PLATFORMS) -> Path:
    """Write a TensorFlow SavedModel of :func:`uint8_logits` to the new folder ``out``: the
    program as ``jax2tf`` serialises it (StableHLO in an ``XlaCallModule``, lowered for each
    of ``platforms``), the weights as TensorFlow variables (outside the graph, so no 2 GiB
    protobuf limit), its ``serve`` function and ``serving_default`` signature taking
    ``images``, uint8 ``(batch, *size, 3)`` (``batch`` ``None``: any batch), and returning
    ``logits``. Needs TensorFlow (imported here only).

    Raises:
      ValueError for a non-positive size or batch, or an existing ``out``.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    _, h, w, _ = _input_shape(size, batch)
    out = Path(out)
    if out.exists():
        raise ValueError(f"out {out} exists; give a new folder")
    fn = jax2tf.convert(uint8_logits(model, config),
                        polymorphic_shapes=[None, f"(b, {h}, {w}, 3)" if batch is None else None],
                        with_gradient=False, native_serialization_platforms=tuple(platforms))
    module = tf.Module()
    module.weights = tf.nest.map_structure(
        lambda a: tf.Variable(np.asarray(a), trainable=False),
        jax.tree.map(np.asarray, jax.device_get(variables)))
    module.serve = tf.function(
        lambda images: {"logits": fn(module.weights, images)},
        input_signature=[tf.TensorSpec((batch, h, w, 3), tf.uint8, name="images")],
        autograph=False)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        tmp.rename(out)  # complete or absent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_onnx(model: Any, variables: Any, config: Any, *, size: tuple[int, int],
                batch: int | None = None) -> bytes:
    """The serialized ONNX model (opset :data:`attnzoo.onnx_graph.OPSET`) of
    :func:`uint8_logits`: input ``images`` uint8 ``(batch, *size, 3)`` (``batch`` ``None``:
    a symbolic ``batch`` dimension), output ``logits``, the weights as initializers
    (:func:`attnzoo.onnx_graph.to_onnx`). Needs the ``onnx`` package.

    Raises:
      ValueError for a non-positive size or batch;
      attnzoo.onnx_graph.UnsupportedPrimitiveError for a graph with an operation ONNX is not
      given (e.g. the memory-bounded attention's loop).
    """
    from attnzoo.onnx_graph import UnsupportedPrimitiveError, to_onnx

    shape = _input_shape(size, batch)
    fn = uint8_logits(model, config)
    try:
        proto = to_onnx(lambda images: fn(variables, images),
                        jax.ShapeDtypeStruct(shape, jnp.uint8),
                        doc=f"attnzoo {config.model.name}: uint8 RGB images -> logits")
    except UnsupportedPrimitiveError as err:
        loops = [what for what, on in (
            ("the memory-bounded attention; export without it",
             config.model.get("memory_efficient")),
            ("the scanned layers (model.scan_layers); export a run with them unrolled",
             config.model.get("scan_layers"))) if on]
        loop = f" (a loop: {'; '.join(loops)})" if loops and "'scan'" in str(err) else ""
        raise UnsupportedPrimitiveError(
            f"{config.model.name} does not export to ONNX: {err}{loop}") from err
    return proto.SerializeToString()


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    if not (h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise ValueError(f"--size takes HxW (e.g. 512x1024); got {text!r}")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a trained or converted run")
    parser.add_argument("--out", required=True,
                        help="the file (a folder for savedmodel) to write, a new one")
    parser.add_argument("--format", choices=FORMATS, default="stablehlo")
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--size", required=True, help="the image size HxW")
    parser.add_argument("--batch", type=int, default=None,
                        help="fixed batch size (default: any batch)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS),
                        help="stablehlo / savedmodel: the platforms to lower for "
                             "(default cpu,cuda,tpu)")
    parser.add_argument("--memory-efficient", action="store_true",
                        help="the memory-bounded attention (exact) in the exported graph "
                             "(not ONNX: a loop)")
    args = parser.parse_args(argv)
    from attnzoo._checks import check_choice, check_writable_folder
    from attnzoo.engine.checkpoint import restore

    out = Path(args.out)
    if out.exists():
        kind = "folder" if args.format == "savedmodel" else "file"
        raise ValueError(f"--out {out} exists; give a new {kind}")
    check_writable_folder(out.parent, "--out")
    size = _size(args.size)
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be positive; got {args.batch}")
    platforms = tuple(p for p in args.platforms.split(",") if p)
    for p in platforms:
        check_choice(p, PLATFORMS, "--platforms")
    model, variables, config = restore(
        args.workdir, step=args.step,
        config_overrides={"model.memory_efficient": args.memory_efficient})
    name = {"stablehlo": "StableHLO", "savedmodel": "a SavedModel", "onnx": "ONNX"}[args.format]
    if args.format == "savedmodel":
        export_savedmodel(model, variables, config, out, size=size, batch=args.batch,
                          platforms=platforms)
        mib = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    else:
        blob = export_stablehlo(model, variables, config, size=size, batch=args.batch,
                                platforms=platforms) if args.format == "stablehlo" else \
            export_onnx(model, variables, config, size=size, batch=args.batch)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(blob)
        tmp.replace(out)
        mib = len(blob) / 2**20
    print(f"wrote {config.model.name} as {name} ({mib:.1f} MiB) to {out}")
    return out


if __name__ == "__main__":
    _cli.run(main)
