"""Whole-image, sliding-window and multi-scale + flip inference.

All functions take ``logits_fn``: images ``(B, H, W, 3)`` -> logits
``(B, H, W, C)`` at the images' size, e.g. ``logits_fn(model, variables)``.
Images of any size are accepted. As mmsegmentation's ``slide_inference``,
windows stay inside the image: in an image smaller than the crop along an
axis, the windows are as long as the image there (never padded up, so a
window's pixels are the ones mmseg's model sees).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import ops
from attnzoo._checks import check_choice, check_pair, check_rank
from attnzoo.models.segmentor import resize_logits

Array = jax.Array
# mmseg's multi-scale + flip test scales (its ``TestTimeAug`` ratios)
TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
LogitsFn = Callable[[Array], Array]


def logits_fn(model: nn.Module, variables: Any) -> LogitsFn:
    """A jitted ``images -> logits`` of ``model``'s main output in eval mode."""
    return jax.jit(lambda images: model.apply(variables, images)["out"])


def largest_array_bytes(jaxpr: Any) -> int:
    """Bytes of the largest array a (closed) jaxpr computes; inside loops and calls, one
    iteration's. A lower bound of the memory running it needs, close to it where one array
    dominates (a dense attention's ``N x N`` map)."""
    most = 0
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        for var in eqn.outvars:
            aval = var.aval
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                most = max(most, math.prod(aval.shape) * np.dtype(aval.dtype).itemsize)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(getattr(sub, "jaxpr", sub), jax.extend.core.Jaxpr):
                    most = max(most, largest_array_bytes(sub))
    return most


def available_memory_bytes() -> int:
    """Memory free on the first local device: its allocator's limit minus what is in use
    (GPU, TPU), or the host's ``MemAvailable`` (CPU, Linux; 0 where unknown)."""
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return int(stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def window_grid(size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]
                ) -> list[tuple[int, int, int, int]]:
    """mmsegmentation's sliding windows ``(y1, y2, x1, x2)``: they cover the image, the last
    ones aligned to the bottom / right edge."""
    (h, w), (ch, cw), (sh, sw) = size, crop, stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            windows.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return windows


def slide_inference(fn: LogitsFn, images: Array, crop_size: int | Sequence[int],
                    stride: int | Sequence[int]) -> Array:
    """Average the logits of overlapping crops (overlaps divided by the number of windows
    covering each pixel); every window is ``min(crop, image)`` along each axis
    (:func:`window_grid`), so one program serves them all. The windows run one after another
    in a ``lax.scan`` (each over the batch's images), so memory holds one window's
    activations and the summed logits however many windows the image has."""
    check_rank(images, 4, "images", "B, H, W, C")
    crop, step = check_pair(crop_size, "crop_size"), check_pair(stride, "stride")
    b, h, w, c = images.shape
    windows = window_grid((h, w), crop, step)
    window = (b, min(crop[0], h), min(crop[1], w), c)
    classes = jax.eval_shape(fn, jax.ShapeDtypeStruct(window, images.dtype)).shape[-1]

    def add_window(total: Array, corner: Array) -> tuple[Array, None]:
        y, x = corner[0], corner[1]
        out = fn(jax.lax.dynamic_slice(images, (0, y, x, 0), window)).astype(jnp.float32)
        at = (0, y, x, 0)
        summed = jax.lax.dynamic_slice(total, at, out.shape) + out
        return jax.lax.dynamic_update_slice(total, summed, at), None

    corners = jnp.asarray([(y1, x1) for y1, _, x1, _ in windows], jnp.int32)
    total, _ = jax.lax.scan(add_window, jnp.zeros((b, h, w, classes), jnp.float32), corners)
    # the windows form a grid: a pixel's count is its row's windows times its column's
    rows, cols = np.zeros(h, np.float32), np.zeros(w, np.float32)
    for y1, y2 in {(y1, y2) for y1, y2, _, _ in windows}:
        rows[y1:y2] += 1
    for x1, x2 in {(x1, x2) for _, _, x1, x2 in windows}:
        cols[x1:x2] += 1
    return total / (jnp.asarray(rows)[:, None, None] * jnp.asarray(cols)[None, :, None])


def inference(
    fn: LogitsFn,
    images: Array,
    *,
    mode: str = "whole",
    crop_size: int | Sequence[int] = 512,
    stride: int | Sequence[int] = 341,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Array:
    """Class probabilities ``(B, H, W, C)`` by whole-image or sliding-window inference.

    With several ``scales`` (e.g. ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``) the
    images are resized bilinearly, predicted, and the logits resized back;
    with ``flip`` each scale is also predicted mirrored (and mirrored back).
    The softmax probabilities of all passes are averaged.
    """
    check_rank(images, 4, "images", "B, H, W, C")
    check_choice(mode, ("whole", "slide"), "mode")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive; got {tuple(scales)}")
    b, h, w, c = images.shape
    probs, passes = 0.0, 0
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = images if size == (h, w) else jax.image.resize(images, (b, *size, c), "bilinear")
        for mirrored in ((False, True) if flip else (False,)):
            x = scaled[:, :, ::-1] if mirrored else scaled
            logits = fn(x) if mode == "whole" else slide_inference(fn, x, crop_size, stride)
            if mirrored:
                logits = logits[:, :, ::-1]
            probs = probs + jax.nn.softmax(resize_logits(logits.astype(jnp.float32), (h, w)), -1)
            passes += 1
    return probs / passes


def protocol_scores(fn: LogitsFn, images: Array, *, mode: str,
                    crop_size: int | Sequence[int], stride: int | Sequence[int],
                    scales: Sequence[float] = (1.0,), flip: bool = False,
                    logits_if_single: bool = True, crf: dict[str, Any] | None = None,
                    pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
                    pixel_std: Sequence[float] = (1.0, 1.0, 1.0)) -> Array:
    """The scores an evaluation protocol labels ``images`` (normalised, ``(B, H, W, 3)``)
    by: one scale without flip and ``logits_if_single``, the logits of the whole image or of
    the sliding windows (mmseg resizes those back to each label); otherwise the averaged
    probabilities of :func:`inference`. ``crf`` (:func:`attnzoo.ops.dense_crf` arguments)
    refines them on the images mapped back to RGB with ``pixel_mean`` / ``pixel_std``
    (probabilities enter as their logarithm). Their argmax is the labelling."""
    single = logits_if_single and tuple(scales) == (1.0,) and not flip
    if single:
        scores = fn(images) if mode == "whole" else slide_inference(fn, images, crop_size, stride)
    else:
        scores = inference(fn, images, mode=mode, crop_size=crop_size, stride=stride,
                           scales=scales, flip=flip)
    if crf is None:
        return scores
    rgb = images.astype(jnp.float32) * jnp.asarray(pixel_std) + jnp.asarray(pixel_mean)
    unary = scores if single else jnp.log(jnp.maximum(scores, jnp.finfo(jnp.float32).tiny))
    return ops.dense_crf(unary, rgb, **crf)


def labels_at_original_size(scores: Array, size: Array, label_size: Array,
                            label_shape: tuple[int, int], *, align_corners: bool = False,
                            block: int = 64) -> Array:
    """Predicted labels at each image's original size (mmsegmentation's
    ``postprocess_result``): the scores of the resized image (the top-left ``size[b]`` of
    ``scores[b]``) resized bilinearly to ``label_size[b]``, then the argmax.

    Args:
      scores: ``(B, H, W, C)`` logits (or probabilities) on the evaluation canvas.
      size: ``(B, 2)`` int, the resized image's (h, w) in the canvas.
      label_size: ``(B, 2)`` int, the original (h, w).
      label_shape: the (static) label canvas; positions past ``label_size`` get labels
        that the padded (ignored) labels never count.
      align_corners: PyTorch's flag for the resize.
      block: rows resized at a time (memory ``B x block x W x C`` floats, never the
        whole label canvas times the classes).

    Returns:
      ``(B, *label_shape)`` int32 labels.
    """
    hl, wl = label_shape
    blocks = -(-hl // block)

    def one(s: Array, sz: Array, lsz: Array) -> Array:
        ty = ops.linear_taps(sz[0], lsz[0], blocks * block, align_corners)
        tx = ops.linear_taps(sz[1], lsz[1], wl, align_corners)

        def rows(taps: tuple[Array, Array, Array]) -> Array:
            y = ops.interpolate_axis(s, 0, taps)
            return ops.interpolate_axis(y, 1, tx).argmax(-1).astype(jnp.int32)

        out = jax.lax.map(rows, tuple(a.reshape(blocks, block) for a in ty))
        return out.reshape(blocks * block, wl)[:hl]

    return jax.vmap(one)(scores, size, label_size)
