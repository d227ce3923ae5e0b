"""tf.data input pipelines: mmsegmentation's training augmentations and plain evaluation.

Training: random resize (ratio 0.5-2.0), random crop whose largest class
covers less than ``cat_max_ratio`` of it (up to 10 tries, as
mmsegmentation's ``RandomCrop``), horizontal flip, photometric distortion
(brightness +-32, contrast and saturation 0.5-1.5, hue +-18 of 180), ImageNet
normalisation, padding of the labels with ``ignore_index``. Randomness is
stateless and seeded per example: the same seed gives the same batches.
Every process reads its own shard of the files (``process_index`` of
``process_count``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import numpy as np

from attnzoo.data.tf_loader import import_tensorflow
from attnzoo import pixels
from attnzoo.pixels import IMAGENET_MEAN, IMAGENET_STD

tf = import_tensorflow()


def _uniform(seed: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, lo, hi)


def _coin(seed: tf.Tensor) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < 0.5


def keep_ratio_factor(size: tf.Tensor, scale: tuple[int, int]) -> tf.Tensor:
    """mmsegmentation's ``Resize`` with ``keep_ratio``: the factor that brings the long side of
    ``size`` (h, w; float) to at most ``scale[0]`` and the short side to at most ``scale[1]``."""
    return tf.minimum(scale[0] / tf.reduce_max(size), scale[1] / tf.reduce_min(size))


def resize_pair(image: tf.Tensor, label: tf.Tensor, new: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Resize to ``new`` (h, w): the image bilinear, the label nearest.

    An image already of size ``new`` is returned as it is (resizing it would copy the same
    values: bilinear and nearest sample pixel centres exactly at scale 1).
    """
    def resize() -> tuple[tf.Tensor, tf.Tensor]:
        return (tf.image.resize(image, new, "bilinear"),
                tf.image.resize(label[..., None], new, "nearest")[..., 0])

    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], new))
    return tf.cond(same, lambda: (tf.cast(image, tf.float32), label), resize)


def random_resize(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
                  ratio_range: tuple[float, float], scale: tuple[int, int] | None) -> tuple:
    """Rescale by ``r ~ U(ratio_range)`` of ``scale`` (long, short; keep ratio) or of the image."""
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    r = _uniform(seed, *ratio_range)
    if scale is not None:
        r = r * keep_ratio_factor(size, scale)
    return resize_pair(image, label, tf.cast(tf.round(size * r), tf.int32))


def random_crop(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, crop: tuple[int, int],
                cat_max_ratio: float, ignore_index: int, num_classes: int) -> tuple:
    """Pad to at least ``crop`` (image 0, labels ``ignore_index``), then crop (cat_max_ratio rule)."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ph, pw = tf.maximum(crop[0] - h, 0), tf.maximum(crop[1] - w, 0)
    image = tf.pad(image, [[0, ph], [0, pw], [0, 0]])
    label = tf.pad(label, [[0, ph], [0, pw]], constant_values=ignore_index)
    h, w = h + ph, w + pw
    seeds = tf.random.experimental.stateless_split(seed, 10)

    def offset(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        y = tf.random.stateless_uniform([], seeds[i], 0, h - crop[0] + 1, tf.int32)
        x = tf.random.stateless_uniform([], seeds[i][::-1], 0, w - crop[1] + 1, tf.int32)
        return y, x

    def acceptable(y: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        patch = tf.reshape(label[y:y + crop[0], x:x + crop[1]], [-1])
        patch = tf.boolean_mask(patch, patch != ignore_index)
        counts = tf.math.bincount(patch, minlength=num_classes)
        present = tf.reduce_sum(tf.cast(counts > 0, tf.int32))
        total = tf.maximum(tf.reduce_sum(counts), 1)
        return (present > 1) & (tf.cast(tf.reduce_max(counts), tf.float32)
                                < cat_max_ratio * tf.cast(total, tf.float32))

    def body(i, y, x, done):
        ny, nx = offset(i)
        return i + 1, ny, nx, acceptable(ny, nx)

    def search() -> tuple[tf.Tensor, tf.Tensor]:
        y0, x0 = offset(0)
        if cat_max_ratio >= 1.0:
            return y0, x0
        _, y0, x0, _ = tf.while_loop(lambda i, y, x, done: (i < 10) & ~done, body,
                                     (1, y0, x0, acceptable(y0, x0)))
        return y0, x0

    # an image of the crop's size has one offset, (0, 0): nothing to draw or try
    y0, x0 = tf.cond((h == crop[0]) & (w == crop[1]), lambda: (0, 0), search)
    return image[y0:y0 + crop[0], x0:x0 + crop[1]], label[y0:y0 + crop[0], x0:x0 + crop[1]]


def photometric_distortion(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """mmsegmentation's ``PhotoMetricDistortion`` on a float image in [0, 255]."""
    s = tf.random.experimental.stateless_split(seed, 8)
    image = tf.where(_coin(s[0]), image + _uniform(s[1], -32.0, 32.0), image)
    contrast = tf.where(_coin(s[2]), _uniform(s[3], 0.5, 1.5), 1.0)
    image = tf.clip_by_value(image * contrast, 0.0, 255.0) / 255.0
    image = tf.where(_coin(s[4]), tf.image.adjust_saturation(image, _uniform(s[5], 0.5, 1.5)), image)
    image = tf.where(_coin(s[6]), tf.image.adjust_hue(image, _uniform(s[7], -0.1, 0.1)), image)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def normalize(image: tf.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> tf.Tensor:
    """``(image - mean) / std`` in float32 (the model's ``pixel_mean`` / ``pixel_std``)."""
    return (tf.cast(image, tf.float32) - tuple(mean)) / tuple(std)


def lookup(table: Sequence[int]) -> Callable[[tf.Tensor], tf.Tensor]:
    """A label map from a 256-entry table (raw uint8 mask value -> train id)."""
    table = tf.constant(table, tf.int32)
    return lambda label: tf.gather(table, label)


def _split_example(example: dict, image_key: str, mask_key: str) -> tuple[tf.Tensor, tf.Tensor]:
    label = example[mask_key]
    if label.shape.rank == 3:
        label = label[..., 0]
    return tf.cast(example[image_key], tf.float32), tf.cast(label, tf.int32)


def fit_size(size: tf.Tensor, scale: tuple[int, int] | None,
             canvas: tuple[int, int] | None) -> tf.Tensor:
    """:func:`attnzoo.pixels.fit_size` of an image's ``size`` tensor (one rule for the pipeline
    and the inference code; computed in Python, as mmcv, per image)."""
    def fit(hw: np.ndarray) -> np.ndarray:
        return np.asarray(pixels.fit_size(hw, scale, canvas), np.int32)

    new = tf.numpy_function(fit, [size], tf.int32, stateful=False)
    return tf.ensure_shape(new, (2,))


def resize_to_fit(image: tf.Tensor, label: tf.Tensor, scale: tuple[int, int] | None,
                  canvas: tuple[int, int] | None) -> tuple[tf.Tensor, tf.Tensor]:
    """Resize image and label to :func:`fit_size` (bilinear / nearest)."""
    if scale is None and canvas is None:
        return image, label
    return resize_pair(image, label, fit_size(tf.shape(image)[:2], scale, canvas))


def train_dataset(
    ds: tf.data.Dataset,
    *,
    batch_size: int,
    crop_size: Sequence[int],
    num_classes: int,
    seed: int = 0,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    scale: tuple[int, int] | None = None,
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
    photometric: bool = True,
    label_map: Callable[[tf.Tensor], tf.Tensor] | None = None,
    image_key: str = "image",
    mask_key: str = "segmentation_mask",
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 1000,
    skip: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tf.data.Dataset:
    """Infinite, shuffled, augmented batches ``{"image": (b, h, w, 3) float32, "label": (b, h, w) int32}``.

    ``batch_size`` is this process's share of the global batch.
    ``label_map`` maps raw mask values to train ids (e.g. Cityscapes, see
    :func:`lookup`); ``image_key`` / ``mask_key`` name the example's features.
    ``skip`` drops that many of this process's examples before they are
    augmented (resuming at step ``s`` skips ``s * batch_size``): the stream
    then continues exactly as an uninterrupted one would. Images are normalised with
    ``mean`` / ``std`` (:func:`normalize`).
    """
    crop = (int(crop_size[0]), int(crop_size[1]))
    ds = ds.shard(process_count, process_index)
    ds = ds.shuffle(shuffle_buffer, seed=seed + process_index, reshuffle_each_iteration=True).repeat()
    seeds = tf.data.Dataset.random(seed=seed * 1009 + process_index).batch(2)

    def augment(example: dict, seed2: tf.Tensor) -> dict:
        image, label = _split_example(example, image_key, mask_key)
        if label_map is not None:
            label = label_map(label)
        s = tf.random.experimental.stateless_split(tf.cast(seed2, tf.int64), 4)
        image, label = random_resize(image, label, s[0], ratio_range, scale)
        image, label = random_crop(image, label, s[1], crop, cat_max_ratio, ignore_index, num_classes)
        flip = _coin(s[2])
        image = tf.where(flip, image[:, ::-1], image)
        label = tf.where(flip, label[:, ::-1], label)
        if photometric:
            image = photometric_distortion(image, s[3])
        image = tf.ensure_shape(normalize(image, mean, std), crop + (3,))
        return {"image": image, "label": tf.ensure_shape(label, crop)}

    ds = tf.data.Dataset.zip((ds, seeds)).skip(skip)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(
    ds: tf.data.Dataset,
    *,
    batch_size: int,
    label_map: Callable[[tf.Tensor], tf.Tensor] | None = None,
    image_key: str = "image",
    mask_key: str = "segmentation_mask",
    scale: tuple[int, int] | None = None,
    canvas: tuple[int, int] | None = None,
    label_canvas: tuple[int, int] | None = None,
    ignore_index: int = 255,
    process_index: int = 0,
    process_count: int = 1,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tf.data.Dataset:
    """Images normalised with ``mean`` / ``std`` and labels, one pass in order (this process's
    shard).

    Without ``scale`` and ``canvas`` images keep their size (every image of
    the split must then have the same size, as Cityscapes'). Datasets of
    mixed sizes (ADE20K, Pet, folders) give a ``canvas`` (h, w): each image
    is resized as :func:`resize_to_fit` and padded to the canvas (image with
    zeros after normalisation, labels with ``ignore_index``), so that batches
    have one shape. Metrics are then taken on the resized labels, unless
    ``label_canvas`` (h, w) is given: then, as mmsegmentation's test pipeline,
    only the image is resized; the label keeps its original size (padded with
    ``ignore_index`` to ``label_canvas``; a larger one is an error naming
    ``dataset.eval_label_canvas``) and each example also holds ``size`` (the
    resized h, w inside the canvas) and ``label_size`` (the original h, w), so
    that the predictions can be resized back to the label before the metric.
    """
    ds = ds.shard(process_count, process_index)

    def prepare(example: dict) -> dict:
        image, label = _split_example(example, image_key, mask_key)
        if label_map is not None:
            label = label_map(label)
        out = {}
        if label_canvas is None:
            image, label = resize_to_fit(image, label, scale, canvas)
        else:
            label_size = tf.shape(label)[:2]
            check = tf.debugging.assert_less_equal(
                label_size, tf.constant(label_canvas), message=(
                    f"an evaluation label is larger than dataset.eval_label_canvas="
                    f"{tuple(label_canvas)}; raise it"))
            with tf.control_dependencies([check]):  # the check runs before the padding fails
                label = tf.identity(label)
            size = fit_size(label_size, scale, canvas)
            image = tf.image.resize(image, size, "bilinear")
            label = tf.ensure_shape(_pad(label, label_canvas, ignore_index), label_canvas)
            out = {"size": size, "label_size": label_size}
        image = normalize(image, mean, std)
        if canvas is not None:
            image = tf.ensure_shape(_pad(image, canvas, 0.0), (*canvas, 3))
            if label_canvas is None:
                label = tf.ensure_shape(_pad(label, canvas, ignore_index), canvas)
        return {"image": image, "label": label, **out}

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def _pad(x: tf.Tensor, canvas: tuple[int, int], value: float | int) -> tf.Tensor:
    """Pad the first two axes of ``x`` at the bottom and right to ``canvas`` with ``value``."""
    pad = [[0, canvas[0] - tf.shape(x)[0]], [0, canvas[1] - tf.shape(x)[1]]]
    return tf.pad(x, pad + [[0, 0]] * (len(x.shape) - 2), constant_values=value)


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    """Iterate a dataset as dicts of numpy arrays."""
    return iter(ds.as_numpy_iterator())
