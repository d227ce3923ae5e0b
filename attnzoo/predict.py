r"""Predict segmentation masks for image files with a trained run.

    python -m attnzoo.predict --workdir runs/quickstart --out preds img1.png img2.jpg
    python -m attnzoo.predict --workdir runs/quickstart --out preds --attention \
        --point 64,64 --point 100,20 img1.png
    python -m attnzoo.predict --workdir runs/quickstart --out preds --crf img1.png

For each image writes ``<stem>_mask.png`` (class colours) and
``<stem>_overlay.png``. With ``--attention`` (DANet models) also
``<stem>_pam.png``: for each query point (``y,x`` in image pixels) the
position-attention weights it gives to every position, as the DANet paper's
Figure 4; and ``<stem>_cam.png``: channel maps of the channel-attention
output (``--channels``), as its Figure 5. ``--crf`` refines the masks with the fully
connected CRF (:func:`attnzoo.ops.dense_crf`, DeepLab's parameters unless ``--crf-params``
sets them). Needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import _cli, ops, viz
from attnzoo._checks import check_writable_folder, same_stems
from attnzoo.blocks.danet import ChannelAttention, PositionAttention
from attnzoo.ops.conv import describe_implementation
from attnzoo.data.datasets import spec
from attnzoo.pixels import normalize_image

log = logging.getLogger("attnzoo")


def _find(tree: Any, key: str) -> Any:
    """The first sub-dict of a nested dict stored under ``key`` (depth-first)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def attention_maps(model: Any, variables: Any, image: jax.Array, points: Sequence[tuple[int, int]],
                   channels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(pam, cam)`` of one normalised image ``(1, H, W, 3)`` for a DANet model: ``pam``
    ``(P, h, w)`` the position-attention weights of each query point (image pixels, mapped
    onto the feature grid ``h x w``), ``cam`` ``(len(channels), h, w)`` channels of the
    channel-attention output."""

    def wanted(module: Any, method: str) -> bool:
        parent = module.parent
        return method == "__call__" and (
            isinstance(module, ChannelAttention)
            or (isinstance(parent, PositionAttention) and module.name in ("query_conv", "key_conv")))

    _, state = model.apply(variables, image, capture_intermediates=wanted, mutable=["intermediates"])
    inter = state["intermediates"]
    q, k = _find(inter, "query_conv"), _find(inter, "key_conv")
    cam = _find(inter, "cam")
    if q is None or k is None or cam is None:
        raise ValueError("--attention needs a model with DANet position and channel attention "
                         "(a danet_* model)")
    q, k, cam = q["__call__"][0], k["__call__"][0], cam["__call__"][0]
    (H, W), (h, w) = image.shape[1:3], q.shape[1:3]
    grid_points = []
    for y, x in points:
        if not (0 <= y < H and 0 <= x < W):
            raise ValueError(f"--point: ({y}, {x}) is outside the {H}x{W} image")
        grid_points.append((y * h // H, x * w // W))
    pam = ops.position_attention_map(q.astype(jnp.float32), k.astype(jnp.float32), grid_points)[0]
    for c in channels:
        if not 0 <= c < cam.shape[-1]:
            raise ValueError(f"--channels: {c} is outside the {cam.shape[-1]} channels")
    cam_maps = jnp.moveaxis(cam[0][..., list(channels)], -1, 0)
    return np.asarray(pam), np.asarray(cam_maps)


def _parse_points(values: Sequence[str]) -> list[tuple[int, int]]:
    points = []
    for v in values:
        try:
            y, x = (int(p) for p in v.split(","))
        except ValueError:
            raise ValueError(f"--point takes y,x integers; got {v!r}") from None
        points.append((y, x))
    return points


def _check_distinct_stems(images: Sequence[str | Path]) -> None:
    """ValueError naming the images whose outputs would overwrite each other's
    (``<stem>_mask.png``: ``a.png`` and ``a.jpg``, or ``a.png`` in two folders), before
    anything is written."""
    clashes = same_stems(images)
    if clashes:
        raise ValueError("images " + "; ".join(" and ".join(paths) for paths in clashes)
                         + " would write the same <stem>_mask.png: predict them into separate "
                         "--out folders or rename one")


def _with_memory_efficient_attention(config: Any) -> Any:
    """``config``'s model built with ``memory_efficient=True`` (the same variables)."""
    from attnzoo.engine.state import build_model

    config = config.copy_and_resolve_references()
    config.model.memory_efficient = True
    return build_model(config)


def _size(n: int) -> str:
    """Bytes as ``"1.5 GiB"`` or ``"12 MiB"``."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _needs_bounded_attention(path: str | Path, dense: Any, bounded: Any, args: Sequence[Any]
                             ) -> bool:
    """Whether ``path``'s image must take the memory-bounded attention: the largest array of
    the dense program (traced, not run; :func:`attnzoo.inference.largest_intermediate_bytes`)
    exceeds a quarter of the free memory and the bounded program's does not (said in one
    line). ValueError when neither fits the free memory."""
    from attnzoo.inference import available_memory_bytes, largest_intermediate_bytes

    free = available_memory_bytes()
    if free <= 0:  # unknown: nothing to judge by
        return False
    need = largest_intermediate_bytes(dense, *args)
    if need <= free // 4:
        return False
    need_bounded = largest_intermediate_bytes(bounded, *args)
    h, w = args[1].shape[1:3]
    if need_bounded > free:
        raise ValueError(f"{path}: predicting this {h}x{w} image needs at least "
                         f"{_size(need_bounded)} (its largest array, with the memory-bounded "
                         f"attention) and {_size(free)} are free: predict a smaller copy of it")
    if need_bounded >= need:  # no attention map to bound: run it as it is
        return False
    log.info("%s: the %dx%d image's dense attention map would take %s of the %s free; using "
             "the memory-bounded attention (as --memory-efficient; the same result)",
             path, h, w, _size(need), _size(free))
    return True


def predict_files(workdir: str | Path, images: Sequence[str | Path], out: str | Path, *,
                  attention: bool = False, points: Sequence[tuple[int, int]] = (),
                  channels: Sequence[int] = (0, 1, 2, 3), memory_efficient: bool = False,
                  step: int | None = None, crf: dict[str, Any] | None = None) -> list[Path]:
    """Write masks and overlays (and attention pictures) of ``images`` to ``out``; returns the
    files written. ``crf`` (:func:`attnzoo.ops.dense_crf` arguments, ``{}`` for its defaults)
    refines the masks on each image. Logs the run's convolution setting
    (``config.conv_implementation``), which the predictions are computed with. An image whose
    dense attention map would not fit the free memory takes the memory-bounded attention
    (``memory_efficient``, exact) with a one-line message; one that would not fit either
    way is refused naming it."""
    from attnzoo.engine.checkpoint import restore

    _check_distinct_stems(images)
    out = check_writable_folder(out, "--out")
    model, variables, config = restore(workdir, step=step,
                                       config_overrides={"model.memory_efficient": memory_efficient})
    log.info("%s", describe_implementation(config.conv_implementation))
    num_classes, ignore = int(config.dataset.num_classes), int(config.dataset.ignore_index)
    palette = spec(config.dataset.name).class_colours(num_classes)

    def labels_of(m: Any) -> Any:
        @ops.conv_implementation(config.conv_implementation)
        def labels(v: Any, x: jax.Array, rgb: jax.Array) -> jax.Array:
            logits = m.apply(v, x)["out"].astype(jnp.float32)
            if crf is not None:
                logits = ops.dense_crf(logits, rgb, **crf)
            return logits.argmax(-1)

        return labels

    bounded_model = model if memory_efficient else _with_memory_efficient_attention(config)
    bounded_by_shape: dict[tuple[int, ...], bool] = {}
    programs: dict[bool, Any] = {}
    written = []
    for path in images:
        rgb = viz.load_image(path)
        x = jnp.asarray(normalize_image(rgb, config.model.pixel_mean, config.model.pixel_std))[None]
        args = (variables, x, jnp.asarray(rgb, jnp.float32)[None])
        if x.shape not in bounded_by_shape:
            bounded_by_shape[x.shape] = memory_efficient or _needs_bounded_attention(
                path, labels_of(model), labels_of(bounded_model), args)
        bounded = bounded_by_shape[x.shape]
        chosen = bounded_model if bounded else model
        if bounded not in programs:
            programs[bounded] = jax.jit(labels_of(chosen))
        mask = np.asarray(programs[bounded](*args))[0]
        colours = viz.colorize(mask, num_classes, ignore, colours=palette)
        stem = Path(path).stem
        written.append(viz.save_png(out / f"{stem}_mask.png", colours))
        written.append(viz.save_png(out / f"{stem}_overlay.png", viz.overlay(rgb, colours)))
        if attention:
            pts = list(points) or [(rgb.shape[0] // 2, rgb.shape[1] // 2)]
            pam, cam = attention_maps(chosen, variables, x, pts, channels)
            size = rgb.shape[:2]
            row = [rgb]
            for (y, xx), m in zip(pts, pam):
                pic = viz.overlay(rgb, viz.resize_nearest(viz.heatmap(m), size), 0.6)
                pic[max(y - 2, 0):y + 3, max(xx - 2, 0):xx + 3] = (0, 255, 0)  # the query point
                row.append(pic)
            written.append(viz.save_png(out / f"{stem}_pam.png", viz.grid([row])))
            cams = [viz.resize_nearest(viz.heatmap(m), size) for m in cam]
            written.append(viz.save_png(out / f"{stem}_cam.png", viz.grid([[rgb, *cams]])))
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.predict",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--workdir", required=True, help="training workdir or checkpoint directory")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--attention", action="store_true",
                        help="also write DANet position / channel attention pictures")
    parser.add_argument("--point", action="append", default=[], metavar="Y,X",
                        help="a query point in image pixels (repeat for several; default: the "
                             "image centre)")
    parser.add_argument("--channels", default="0,1,2,3", help="CAM output channels to draw")
    parser.add_argument("--memory-efficient", action="store_true")
    _cli.add_crf_arguments(parser)
    _cli.add_cache_arguments(parser)
    args = parser.parse_args(argv)
    _cli.use_cache(args)
    try:
        channels = [int(c) for c in args.channels.split(",")]
    except ValueError:
        parser.error(f"--channels takes comma-separated integers; got {args.channels!r}")
    written = predict_files(args.workdir, args.images, args.out, attention=args.attention,
                            points=_parse_points(args.point), channels=channels,
                            memory_efficient=args.memory_efficient, step=args.step,
                            crf=_cli.crf_arguments(args))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    _cli.run(main)
