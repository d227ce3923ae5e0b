"""context_shapes builder, its generator's rules, the tf.data pipeline and global batches."""

import jax
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

from attnzoo import data, sharding  # noqa: E402
from attnzoo.data import context_shapes as cs  # noqa: E402
from attnzoo.data import pipeline  # noqa: E402


@pytest.fixture(scope="module")
def prepared(context_shapes_dir):
    return data.builder("context_shapes", context_shapes_dir)


def test_generator_rules():
    for i in range(40):
        image, mask, mode = cs.render(7, 0, i)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and mask.shape == (128, 128)
        marker = mask == cs.CLASSES.index(f"marker_m{mode}")  # the marker is labelled by mode
        assert marker.sum() == cs.MARKER**2
        assert (image[marker] == cs.MARKER_COLOURS[mode]).all()
        shapes = set(np.unique(mask)) - {0, cs.CLASSES.index(f"marker_m{mode}")}
        # a shape's class is its kind in the image's mode
        assert shapes <= set(cs.CLASS_OF[mode])
    np.testing.assert_array_equal(cs.render(7, 0, 3)[0], cs.render(7, 0, 3)[0])
    assert not np.array_equal(cs.render(7, 0, 3)[0], cs.render(7, 0, 4)[0])
    modes = [cs.render(7, 0, i)[2] for i in range(40)]
    assert 0 < sum(modes) < 40


def test_class_depends_on_the_marker():
    """The same kind of shape gets a different class in the two modes, and every shape class
    occurs; a shape's pixels all carry one class."""
    seen = set()
    for i in range(60):
        image, mask, mode = cs.render(11, 0, i)
        for cls in set(np.unique(mask)) - {0, cs.CLASSES.index(f"marker_m{mode}")}:
            seen.add((mode, cs.CLASS_OF[mode].index(cls), cls))
    assert {c for _, _, c in seen} == set(range(1, 7))
    for kind in range(len(cs.KINDS)):
        assert {c for m, k, c in seen if k == kind and m == 0} \
            .isdisjoint({c for m, k, c in seen if k == kind and m == 1})


def test_prepared_splits(prepared):
    splits = prepared.info.splits
    assert splits["train"].num_examples == 3000 and splits["validation"].num_examples == 500
    assert prepared.info.metadata["classes"] == list(cs.CLASSES)
    ex = next(iter(prepared.as_dataset(split="validation").take(1).as_numpy_iterator()))
    assert ex["image"].shape == (128, 128, 3) and ex["segmentation_mask"].shape == (128, 128, 1)
    assert set(np.unique(ex["segmentation_mask"])) <= set(range(len(cs.CLASSES)))


def test_train_pipeline_shapes_ranges_and_determinism(prepared):
    def first(seed):
        ds = pipeline.train_dataset(prepared.as_dataset(split="train", shuffle_files=False),
                                    batch_size=4, crop_size=(96, 96), num_classes=8, seed=seed)
        return next(pipeline.as_numpy(ds))

    a, b, c = first(0), first(0), first(1)
    assert a["image"].shape == (4, 96, 96, 3) and a["image"].dtype == np.float32
    assert a["label"].shape == (4, 96, 96) and a["label"].dtype == np.int32
    assert set(np.unique(a["label"])) <= set(range(len(cs.CLASSES))) | {255}
    assert abs(float(a["image"].mean())) < 1.5  # normalised
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])


def test_skip_continues_the_stream_exactly(prepared):
    def batches(skip, n):
        ds = pipeline.train_dataset(prepared.as_dataset(split="train", shuffle_files=False),
                                    batch_size=2, crop_size=(64, 64), num_classes=8, seed=3,
                                    shuffle_buffer=16, skip=skip)
        it = pipeline.as_numpy(ds)
        return [next(it) for _ in range(n)]

    full, resumed = batches(0, 3), batches(4, 1)
    np.testing.assert_array_equal(resumed[0]["image"], full[2]["image"])
    np.testing.assert_array_equal(resumed[0]["label"], full[2]["label"])


def test_normalize_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    x = data.normalize_image(rgb)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], (rgb[..., 0] - 123.675) / 58.395, rtol=1e-6)
    np.testing.assert_array_equal(data.denormalize_image(x), rgb)


def test_crop_pads_with_ignore_and_respects_cat_max_ratio():
    image = tf.zeros((40, 40, 3))
    label = np.zeros((40, 40), np.int32)
    label[:, 30:] = 1  # class 1 covers a quarter: most 32x32 crops are >75% background
    crop = (32, 32)
    accepted = 0
    for s in range(20):
        _, lab = pipeline.random_crop(image, tf.constant(label), tf.constant([s, 1], tf.int64),
                                      crop, 0.75, 255, 2)
        counts = np.bincount(lab.numpy().ravel(), minlength=2)
        accepted += counts.max() / counts.sum() < 0.75
    assert accepted >= 15  # up to 10 tries per crop find an acceptable one almost always
    small_img, small_lab = pipeline.random_crop(tf.ones((20, 24, 3)), tf.zeros((20, 24), tf.int32),
                                                tf.constant([0, 0], tf.int64), crop, 1.0, 255, 2)
    assert small_img.shape == (32, 32, 3) and (small_lab.numpy()[20:] == 255).all()
    assert (small_lab.numpy()[:, 24:] == 255).all() and (small_img.numpy()[20:] == 0).all()


def test_resize_and_crop_at_the_image_size_change_nothing():
    """The shortcuts for a resize to the same size and a crop of the whole image return what the
    general path returns: TF's bilinear / nearest resize at scale 1 copies every value, and the
    only offset is (0, 0)."""
    image = tf.random.stateless_uniform((37, 53, 3), [5, 6], 0, 255)
    label = tf.random.stateless_uniform((37, 53), [7, 8], 0, 5, tf.int32)
    np.testing.assert_array_equal(tf.image.resize(image, (37, 53), "bilinear"), image)
    np.testing.assert_array_equal(tf.image.resize(label[..., None], (37, 53), "nearest")[..., 0],
                                  label)
    dynamic = tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([None, None], tf.int32)
    pair = tf.function(lambda i, l, n: pipeline.resize_pair(i, l, n),
                       input_signature=(*dynamic, tf.TensorSpec([2], tf.int32)))
    same_image, same_label = pair(image, label, tf.constant([37, 53]))
    np.testing.assert_array_equal(same_image, image)
    np.testing.assert_array_equal(same_label, label)
    resized_image, resized_label = pair(image, label, tf.constant([74, 106]))
    assert resized_image.shape == (74, 106, 3) and resized_label.shape == (74, 106)
    np.testing.assert_array_equal(resized_label[::2, ::2], label)
    crop = tf.function(lambda i, l, s: pipeline.random_crop(i, l, s, (37, 53), 0.75, 255, 5),
                       input_signature=(*dynamic, tf.TensorSpec([2], tf.int64)))
    for seed in range(3):
        cropped_image, cropped_label = crop(image, label, tf.constant([seed, 1], tf.int64))
        np.testing.assert_array_equal(cropped_image, image)
        np.testing.assert_array_equal(cropped_label, label)
    assert crop(tf.concat([image, image], 0), tf.concat([label, label], 0),
                tf.constant([0, 1], tf.int64))[0].shape == (37, 53, 3)


def test_resize_to_fit_keeps_ratio_then_fits_the_canvas():
    image = tf.random.stateless_uniform((100, 300, 3), [1, 2], 0, 255)
    label = tf.random.stateless_uniform((100, 300), [3, 4], 0, 5, tf.int32)
    # mmsegmentation's rule: long side <= 200, short side <= 50 -> factor 0.5
    img, lab = pipeline.resize_to_fit(image, label, (200, 50), None)
    assert img.shape == (50, 150, 3) and lab.shape == (50, 150)
    np.testing.assert_array_equal(lab.numpy(), label.numpy()[1::2, 1::2])  # nearest, half-pixel
    # then into a 64x128 canvas: the width decides (128 / 300)
    img, lab = pipeline.resize_to_fit(image, label, (200, 50), (64, 128))
    assert img.shape == (43, 128, 3) and lab.shape == (43, 128)
    # a canvas alone never enlarges
    img, _ = pipeline.resize_to_fit(image, label, None, (512, 512))
    np.testing.assert_array_equal(img.numpy(), image.numpy())


def test_eval_canvas_pads_with_ignore():
    examples = tf.data.Dataset.from_tensor_slices({
        "image": np.full((2, 30, 40, 3), 200, np.uint8),
        "segmentation_mask": np.ones((2, 30, 40, 1), np.uint8)})
    batch = next(pipeline.as_numpy(pipeline.eval_dataset(examples, batch_size=2, canvas=(32, 48))))
    assert batch["image"].shape == (2, 32, 48, 3) and batch["label"].shape == (2, 32, 48)
    assert (batch["label"][:, :30, :40] == 1).all() and (batch["label"][:, 30:] == 255).all()
    assert (batch["label"][:, :, 40:] == 255).all() and (batch["image"][:, 30:] == 0).all()


def test_eval_pipeline_keeps_images(prepared):
    ds = pipeline.eval_dataset(prepared.as_dataset(split="validation", shuffle_files=False),
                               batch_size=8)
    batch = next(pipeline.as_numpy(ds))
    assert batch["image"].shape == (8, 128, 128, 3) and batch["label"].shape == (8, 128, 128)


def test_global_batch_on_8_devices(prepared):
    from jax.sharding import AxisType, PartitionSpec

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    n = sharding.local_batch_size(16, mesh)
    ds = pipeline.train_dataset(prepared.as_dataset(split="train"), batch_size=n,
                                crop_size=(64, 64), num_classes=8)
    batches = sharding.prefetch_to_mesh(pipeline.as_numpy(ds.take(3)), mesh)
    count = 0
    for batch in batches:
        count += 1
        assert batch["image"].shape == (16, 64, 64, 3)
        assert batch["image"].sharding.spec == PartitionSpec("data")
        assert len(batch["label"].addressable_shards) == 8
        assert batch["label"].addressable_shards[0].data.shape == (2, 64, 64)
    assert count == 3
    with pytest.raises(ValueError, match="batch_size=12 must be a positive multiple of the 8"):
        sharding.local_batch_size(12, mesh)


def test_eval_label_canvas_keeps_labels_at_their_original_size():
    """mmseg's test pipeline: only the image is resized (keep ratio, rounded half up); the
    label keeps its size, padded with ignore to the label canvas; the sizes come along."""
    def examples(h, w, value):
        return tf.data.Dataset.from_tensor_slices({
            "image": np.full((1, h, w, 3), 200, np.uint8),
            "segmentation_mask": np.full((1, h, w, 1), value, np.uint8)})

    ds = examples(30, 40, 1).concatenate(examples(20, 50, 2))
    batch = next(pipeline.as_numpy(pipeline.eval_dataset(
        ds, batch_size=2, scale=(40, 20), canvas=(32, 48), label_canvas=(32, 64))))
    assert batch["image"].shape == (2, 32, 48, 3) and batch["label"].shape == (2, 32, 64)
    np.testing.assert_array_equal(batch["size"], [[20, 27], [16, 40]])
    np.testing.assert_array_equal(batch["label_size"], [[30, 40], [20, 50]])
    assert (batch["label"][0, :30, :40] == 1).all() and (batch["label"][0, 30:] == 255).all()
    assert (batch["label"][1, :20, :50] == 2).all() and (batch["label"][1, :, 50:] == 255).all()
    assert (batch["image"][0, 20:] == 0).all() and (batch["image"][1, :, 40:] == 0).all()
    big = tf.data.Dataset.from_generator(  # sizes unknown until read, as TFDS's images
        lambda: iter([{"image": np.zeros((40, 40, 3), np.uint8),
                       "segmentation_mask": np.ones((40, 40, 1), np.uint8)}]),
        output_signature={"image": tf.TensorSpec((None, None, 3), tf.uint8),
                          "segmentation_mask": tf.TensorSpec((None, None, 1), tf.uint8)})
    with pytest.raises(tf.errors.InvalidArgumentError, match="dataset.eval_label_canvas"):
        next(pipeline.as_numpy(pipeline.eval_dataset(big, batch_size=1, label_canvas=(32, 64))))
