r"""Predict segmentation masks for image files with a trained or converted run, with the
protocol the run records (its test resize, whole image or sliding windows; ``attnzoo.Segmenter``).

    python -m attnzoo.predict --workdir runs/quickstart --out preds img1.png img2.jpg
    python -m attnzoo.predict --workdir runs/ade20k --out preds --format index,overlay img.jpg
    python -m attnzoo.predict --workdir runs/quickstart --out preds --attention \
        --point 64,64 --point 100,20 img1.png
    python -m attnzoo.predict --workdir runs/quickstart --out preds --crf img1.png

For each image writes, as ``--format`` says (default ``color,overlay``):
``<stem>_labels.png`` (class indices, 8-bit grey), ``<stem>_mask.png`` (class colours) and
``<stem>_overlay.png``. With ``--attention`` (DANet models) also
``<stem>_pam.png``: for each query point (``y,x`` in image pixels) the
position-attention weights it gives to every position, as the DANet paper's
Figure 4; and ``<stem>_cam.png``: channel maps of the channel-attention
output (``--channels``), as its Figure 5. ``--crf`` refines the masks with the fully
connected CRF (:func:`attnzoo.ops.dense_crf`, DeepLab's parameters unless ``--crf-params``
sets them); ``--tta`` averages scales 0.5-1.75 and flips. Needs no TensorFlow.
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
from attnzoo._checks import check_choice, check_writable_folder, same_stems
from attnzoo.blocks.danet import ChannelAttention, PositionAttention
from attnzoo.ops.conv import describe_implementation
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


FORMATS = {"index": "labels", "color": "mask", "overlay": "overlay"}


def predict_files(workdir: str | Path, images: Sequence[str | Path], out: str | Path, *,
                  formats: Sequence[str] = ("color", "overlay"), attention: bool = False,
                  points: Sequence[tuple[int, int]] = (), channels: Sequence[int] = (0, 1, 2, 3),
                  memory_efficient: bool = False, step: int | None = None,
                  crf: dict[str, Any] | None = None, mode: str | None = None,
                  tta: bool = False) -> list[Path]:
    """Segment ``images`` with the run's protocol (:class:`attnzoo.Segmenter`) and write, per
    image and ``formats``: ``<stem>_labels.png`` (``index``: class indices, 8-bit grey),
    ``<stem>_mask.png`` (``color``: the classes' colours), ``<stem>_overlay.png``
    (``overlay``); with ``attention`` the DANet pictures. Returns the files written. ``crf``
    (:func:`attnzoo.ops.dense_crf` arguments, ``{}`` for DeepLab's), ``mode`` and ``tta`` as
    :class:`attnzoo.Segmenter`'s. Logs the run's convolution setting, which the predictions
    are computed with."""
    from attnzoo.segmenter import Segmenter

    _check_distinct_stems(images)
    for f in formats:
        check_choice(f, tuple(FORMATS), "--format")
    out = check_writable_folder(out, "--out")
    segmenter = Segmenter.from_run(workdir, step=step, memory_efficient=memory_efficient,
                                   crf=crf, mode=mode, tta=tta)
    config = segmenter.config
    log.info("%s", describe_implementation(config.conv_implementation))
    if len(segmenter.classes) > 256 and "index" in formats:
        raise ValueError(f"--format index writes 8-bit PNGs; the model has "
                         f"{len(segmenter.classes)} classes")
    written = []
    for i, result in segmenter.iterate([str(p) for p in images], progress=len(images) > 1):
        path = images[i]
        rgb = viz.load_image(path) if attention or "overlay" in formats else None
        stem = Path(path).stem
        pictures = {"index": lambda: result.labels.astype(np.uint8), "color": result.colors,
                    "overlay": lambda: result.overlay(rgb)}
        for f in formats:
            written.append(viz.save_png(out / f"{stem}_{FORMATS[f]}.png", pictures[f]()))
        if attention:
            x = jnp.asarray(normalize_image(rgb, config.model.pixel_mean,
                                            config.model.pixel_std))[None]
            pts = list(points) or [(rgb.shape[0] // 2, rgb.shape[1] // 2)]
            pam, cam = attention_maps(segmenter.model, segmenter.variables, x, pts, channels)
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
    parser.add_argument("--memory-efficient", action="store_true",
                        help="exact memory-bounded attention (taken by itself for an image "
                             "whose attention map would not fit the free memory)")
    parser.add_argument("--format", default="color,overlay", metavar="index,color,overlay",
                        help="what to write per image: class indices (<stem>_labels.png), class "
                             "colours (<stem>_mask.png), the colours over the image "
                             "(<stem>_overlay.png); default color,overlay")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None,
                        help="default: the run's evaluation mode")
    parser.add_argument("--tta", action="store_true", help="multi-scale + flip")
    _cli.add_crf_arguments(parser)
    _cli.add_cache_arguments(parser)
    args = parser.parse_args(argv)
    _cli.use_cache(args)
    try:
        channels = [int(c) for c in args.channels.split(",")]
    except ValueError:
        parser.error(f"--channels takes comma-separated integers; got {args.channels!r}")
    written = predict_files(args.workdir, args.images, args.out,
                            formats=[f.strip() for f in args.format.split(",") if f.strip()],
                            attention=args.attention, points=_parse_points(args.point),
                            channels=channels, memory_efficient=args.memory_efficient,
                            step=args.step, crf=_cli.crf_arguments(args), mode=args.mode,
                            tta=args.tta)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    _cli.run(main)
