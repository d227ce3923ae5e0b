"""Segment images with a restored model in a few lines, with the run's evaluation protocol.

    from attnzoo import Segmenter

    segmenter = Segmenter.from_run("runs/danet")          # a trained or converted run
    segmenter = Segmenter.from_mmseg("danet_r50-d8_4xb4-160k_ade20k-512x512", "danet.pth")
    segmenter = Segmenter.from_transformers("segformer-b0-finetuned-ade-512-512/")
    result = segmenter("street.png")                      # a path, PIL image or array
    result.labels                                         # (H, W) class indices, original size
    result.colors()                                       # (H, W, 3) the classes' colours
    [r.labels for r in segmenter(["a.png", "b.jpg"])]     # several images

Each image goes through the protocol the run records, as ``evaluate`` scores it: resized
keeping its ratio to ``config.dataset.eval_scale`` (mmseg's test ``Resize``, none if unset),
normalised with the model's ``pixel_mean`` / ``pixel_std``, predicted whole or in sliding
windows (``config.eval``), at several scales and mirrored with ``tta=True``, refined by the
dense CRF with ``crf``, and the scores resized back to the image's own size before the argmax
(:func:`attnzoo.inference.protocol_scores`, the evaluation step's own). An image whose
dense attention map would not fit the free memory takes the memory-bounded attention (exact;
one line says so), one too large either way is refused naming it. Needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import inference, ops, sharding, viz
from attnzoo.inference import TTA_SCALES
from attnzoo.pixels import fit_size, normalize_image

log = logging.getLogger("attnzoo")


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """One image's result: ``labels`` ``(H, W)`` int32 class indices at the image's size,
    ``probabilities`` ``(H, W, C)`` float32 when asked for, and the model's ``classes`` and
    ``palette`` (``(C, 3)`` uint8)."""

    labels: np.ndarray
    classes: tuple[str, ...]
    palette: np.ndarray
    probabilities: np.ndarray | None = None

    def colors(self) -> np.ndarray:
        """``(H, W, 3)`` uint8: each pixel its class's colour."""
        return viz.colorize(self.labels, len(self.classes), colours=self.palette)

    def overlay(self, image: Any, alpha: float = 0.5) -> np.ndarray:
        """``(H, W, 3)`` uint8: the colours blended over ``image`` (as the segmenter reads it)."""
        return viz.overlay(_rgb(image), self.colors(), alpha)


class Segmenter:
    """A restored model with its evaluation protocol, called on images.

    Args:
      model: the segmentor (``engine.build_model(config)``).
      variables: its variables.
      config: the run's config (``engine.restore``'s), which holds the protocol
        (``dataset.eval_scale``, ``eval.*``, ``model.pixel_mean`` / ``pixel_std`` /
        ``align_corners``) and ``dataset.class_names``.
      mode: ``"whole"`` or ``"slide"`` (default: ``config.eval.mode``).
      tta: multi-scale (0.5-1.75) and flipped predictions averaged (else ``config.eval``'s
        scales and flip).
      crf: :func:`attnzoo.ops.dense_crf` arguments (``{}``: DeepLab's) to refine with.
    """

    def __init__(self, model: Any, variables: Any, config: Any, *, mode: str | None = None,
                 tta: bool = False, crf: dict[str, Any] | None = None) -> None:
        from attnzoo.data.datasets import spec

        self.model, self.variables, self.config = model, variables, config
        e = config.eval
        self.mode = e.mode if mode is None else mode
        self.scales = TTA_SCALES if tta else tuple(e.scales)
        self.flip = True if tta else bool(e.flip)
        self.crf = crf
        n = int(config.dataset.num_classes)
        names = config.dataset.get("class_names") or ()
        self.classes: tuple[str, ...] = tuple(names) if len(names) == n else tuple(
            f"class_{i}" for i in range(n))
        self.palette: np.ndarray = spec(config.dataset.name).class_colours(n)
        self._models = {bool(config.model.memory_efficient): model}
        self._programs: dict[bool, Any] = {}
        self._bounded_for: dict[tuple[int, ...], bool] = {}
        self._placed: tuple[tuple[int, ...], Any] | None = None  # variables on the devices

    @classmethod
    def from_run(cls, workdir: str | Path, *, step: int | None = None,
                 memory_efficient: bool = False, **options: Any) -> Segmenter:
        """The segmenter of a run's checkpoint (a training workdir, a converted run, its
        ``checkpoints`` folder or one step's; ``step``: default the newest readable).
        ``memory_efficient`` builds the model with the memory-bounded attention (exact);
        ``options``: the constructor's."""
        from attnzoo.engine.checkpoint import restore

        model, variables, config = restore(
            workdir, step=step, config_overrides={"model.memory_efficient": memory_efficient})
        return cls(model, variables, config, **options)

    @classmethod
    def from_mmseg(cls, config_stem: str, checkpoint: str | Path | Any,
                   **options: Any) -> Segmenter:
        """The segmenter of an mmsegmentation checkpoint: ``config_stem`` mmseg's config name
        (``"danet_r50-d8_4xb4-160k_ade20k-512x512"``), ``checkpoint`` its ``.pth`` file (or
        state dict), with mmseg's protocol and classes for the config's dataset
        (:func:`attnzoo.convert.from_mmseg`; nothing is written)."""
        from attnzoo.convert.mmseg import from_mmseg, mmseg_recipe
        from attnzoo.engine.config import from_fields

        model, variables = from_mmseg(config_stem, checkpoint)
        return cls(model, variables, from_fields(mmseg_recipe(config_stem).config_fields()),
                   **options)

    @classmethod
    def from_transformers(cls, folder: str | Path, *, protocol: str | None = None,
                          **options: Any) -> Segmenter:
        """The segmenter of a Hugging Face SegFormer download (``folder`` with
        ``model.safetensors`` and ``config.json``), its classes from ``id2label`` and SegFormer's
        protocol for them (or ``protocol``; :func:`attnzoo.convert.transformers_config_fields`)."""
        from attnzoo.convert.segformer import from_transformers, transformers_config_fields
        from attnzoo.engine.config import from_fields

        folder = Path(folder)
        config_path = (folder if folder.is_dir() else folder.parent) / "config.json"
        model, variables = from_transformers(folder, config_path)
        return cls(model, variables,
                   from_fields(transformers_config_fields(config_path, protocol)), **options)

    def __call__(self, images: Any, *, probabilities: bool = False,
                 batch_size: int | None = None, progress: bool = False
                 ) -> Segmentation | list[Segmentation]:
        """Segment one image (a path, a PIL image of any mode, or a uint8 / float ``(H, W, 3)``
        or ``(H, W)`` array of 0-255 values) or a list or tuple of them (a list of results, in
        their order; see :meth:`iterate`); ``probabilities`` adds each pixel's class
        probabilities."""
        if not isinstance(images, (list, tuple)):
            return next(self.iterate([images], probabilities=probabilities))[1]
        results: list[Any] = [None] * len(images)
        for i, result in self.iterate(images, probabilities=probabilities,
                                      batch_size=batch_size, progress=progress):
            results[i] = result
        return results

    def iterate(self, images: Sequence[Any], *, probabilities: bool = False,
                batch_size: int | None = None, progress: bool = False
                ) -> Iterator[tuple[int, Segmentation]]:
        """``(index, result)`` for each of ``images`` as it is done. Images that take one size
        through the protocol go together, ``batch_size`` at a time (default: one per local
        device), spread over the local devices (a batch smaller than their number over as many
        as it has images; a larger one repeats its last image up to a multiple of them): one
        program per size, images never padded (a whole image's context is its own). Only a
        batch's images are read at a time; ``progress`` prints a count on stderr."""
        devices = jax.local_devices()
        batch_size = batch_size or len(devices)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        groups: dict[tuple[tuple[int, int], tuple[int, int]], list[int]] = {}
        for i, image in enumerate(images):
            size = _image_size(image)
            groups.setdefault((size, fit_size(size, self.config.dataset.get("eval_scale"))),
                              []).append(i)
        done = 0
        for (size, resized), members in groups.items():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                used = devices[:len(chunk)]  # a short batch is not repeated over idle devices
                batch = self._batch([images[i] for i in chunk], size, resized, used)
                name = str(images[chunk[0]]) if isinstance(images[chunk[0]], (str, Path)) \
                    else "image"
                bounded = self._needs_bounded_attention(name, batch, size)
                labels, probs = self._program(bounded)(self._replicated(used), batch, size,
                                                       probabilities)
                labels = np.asarray(labels)
                probs = None if probs is None else np.asarray(probs)
                for j, i in enumerate(chunk):
                    done += 1
                    if progress:
                        print(f"\rsegmented {done}/{len(images)} images", end="",
                              file=sys.stderr, flush=True)
                    yield i, Segmentation(labels[j], self.classes, self.palette,
                                          None if probs is None else probs[j])
        if progress and images:
            print(file=sys.stderr)

    def _batch(self, images: Sequence[Any], size: tuple[int, int], resized: tuple[int, int],
               devices: Sequence[Any]) -> jax.Array:
        """``images`` (of ``size``) resized as the evaluation pipeline does, normalised, and
        laid over ``devices`` (the batch repeated up to a multiple of their number)."""
        m = self.config.model
        rgb = np.stack([_rgb(image) for image in images])
        if rgb.shape[1:3] != size:
            raise ValueError(f"image {images[0]} changed size while being read")
        x = jnp.asarray(rgb, jnp.float32)
        if resized != size:
            x = ops.resize_bilinear(x, resized)
        x = normalize_image(np.asarray(x), m.pixel_mean, m.pixel_std)
        n = -(-len(x) // len(devices)) * len(devices)
        x = np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])
        return jax.device_put(x, sharding.batch_sharding(sharding.make_mesh(devices)))

    def _replicated(self, devices: Sequence[Any]) -> Any:
        """The variables replicated on ``devices`` (placed once)."""
        key = tuple(d.id for d in devices)
        if self._placed is None or self._placed[0] != key:
            mesh = sharding.make_mesh(devices)
            self._placed = (key, jax.device_put(self.variables, sharding.replicated(mesh)))
        return self._placed[1]

    def _model(self, bounded: bool) -> Any:
        """The model, or (``bounded``) the same one with the memory-bounded attention."""
        if bounded not in self._models:
            from attnzoo.engine.state import build_model

            config = self.config.copy_and_resolve_references()
            config.model.memory_efficient = bounded
            self._models[bounded] = build_model(config)
        return self._models[bounded]

    def _program(self, bounded: bool) -> Any:
        if bounded not in self._programs:
            self._programs[bounded] = jax.jit(
                functools.partial(self._scores_to_labels, self._model(bounded)),
                static_argnums=(2, 3))
        return self._programs[bounded]

    def _needs_bounded_attention(self, name: str, x: jax.Array, size: tuple[int, int]) -> bool:
        """Whether an input of ``x``'s shape takes the memory-bounded attention: the model's
        own if it has it; else when the dense program's largest array (traced, not run:
        :func:`attnzoo.inference.largest_array_bytes`) exceeds a quarter of the free
        memory and the bounded one's does not (said in one line). ValueError naming the
        image when neither fits the free memory."""
        if self.config.model.memory_efficient:
            return True
        key = (*x.shape, *size)
        if key not in self._bounded_for:
            self._bounded_for[key] = self._judge(name, x, size)
        return self._bounded_for[key]

    def _judge(self, name: str, x: jax.Array, size: tuple[int, int]) -> bool:
        free = inference.available_memory_bytes()
        if free <= 0:  # unknown: nothing to judge by
            return False

        def need(bounded: bool) -> int:  # the trace is the one the call then reuses
            traced = self._program(bounded).trace(self.variables, x, size, False)
            return inference.largest_array_bytes(traced.jaxpr)

        dense = need(False)
        if dense <= free // 4:
            return False
        bounded = need(True)
        h, w = x.shape[1:3]
        if bounded > free:
            raise ValueError(f"{name}: predicting this {h}x{w} image needs at least "
                             f"{_size(bounded)} (its largest array, with the memory-bounded "
                             f"attention) and {_size(free)} are free: predict a smaller copy of it")
        if bounded >= dense:  # no attention map to bound: run it as it is
            return False
        log.info("%s: the %dx%d image's dense attention map would take %s of the %s free; "
                 "using the memory-bounded attention (as --memory-efficient; the same result)",
                 name, h, w, _size(dense), _size(free))
        return True

    def _scores_to_labels(self, model: Any, variables: Any, x: jax.Array,
                          size: tuple[int, int], probabilities: bool
                          ) -> tuple[jax.Array, jax.Array | None]:
        c = self.config

        @ops.conv_implementation(c.conv_implementation)
        def fn(images: jax.Array) -> jax.Array:
            return model.apply(variables, images)["out"].astype(jnp.float32)

        scores = inference.protocol_scores(
            fn, x, mode=self.mode, crop_size=tuple(c.eval.crop_size),
            stride=tuple(c.eval.stride), scales=self.scales, flip=self.flip, crf=self.crf,
            pixel_mean=tuple(c.model.pixel_mean), pixel_std=tuple(c.model.pixel_std))
        align = bool(c.model.align_corners)
        b = x.shape[0]
        labels = inference.labels_at_original_size(
            scores, jnp.tile(jnp.asarray([x.shape[1:3]]), (b, 1)),
            jnp.tile(jnp.asarray([size]), (b, 1)), size, align_corners=align)
        if not probabilities:
            return labels, None
        back = ops.interpolate(scores, size, align_corners=align)
        logits = self.scales == (1.0,) and not self.flip or self.crf is not None
        return labels, jax.nn.softmax(back, -1) if logits else back


def _size(n: int) -> str:
    """Bytes as ``"1.5 GiB"`` or ``"12 MiB"``."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _image_size(image: Any) -> tuple[int, int]:
    """``(h, w)`` of ``image`` without decoding a file's pixels (PIL reads its header)."""
    if isinstance(image, (str, Path)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as im:
                return im.height, im.width
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"cannot read image {image}: {err}") from err
    if hasattr(image, "mode") and hasattr(image, "convert"):
        return image.height, image.width
    return _image_array(image).shape[:2]


def _image_array(image: Any) -> np.ndarray:
    """``image`` as an array, its shape checked (``(H, W, 3)`` or ``(H, W)``), not its values."""
    a = np.asarray(image)
    if a.ndim not in (2, 3) or a.ndim == 3 and a.shape[-1] != 3 or a.shape[0] < 1 \
            or a.shape[1] < 1:
        raise ValueError(f"image: expected an (H, W, 3) or (H, W) array; got shape {a.shape}")
    return a


def _rgb(image: Any) -> np.ndarray:
    """``image`` (a path, a PIL image, an ``(H, W[, 3])`` array of 0-255 values) as uint8 RGB."""
    if isinstance(image, (str, Path)):
        return viz.load_image(image)
    if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image
        return viz.to_rgb8(image)
    a = _image_array(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.dtype != np.uint8:
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
            raise ValueError(f"image: a {a.dtype} array must hold finite 0-255 values; got "
                             f"{a.min()}..{a.max()}")
        a = np.round(a).astype(np.uint8)
    return a


__all__ = ["Segmentation", "Segmenter"]
