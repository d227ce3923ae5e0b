"""``attnzoo.Segmenter``: a restored run's protocol on images, equal to the evaluation step."""

import jax
import numpy as np
import pytest

from attnzoo import Segmenter, engine, metrics, sharding
from attnzoo.data import context_shapes as cs
from attnzoo.pixels import normalize_image


def _images(n, seed=3):
    pairs = [cs.render(seed, 1, i)[:2] for i in range(n)]
    return [p[0] for p in pairs], [p[1].astype(np.int32) for p in pairs]


def _confusion(segmenter, images, labels, num_classes):
    return sum(np.asarray(metrics.confusion_matrix(r.labels[None], lb[None], num_classes, 255))
               for r, lb in zip(segmenter(images), labels))


@pytest.mark.parametrize("tta", [False, pytest.param(True, marks=pytest.mark.exhaustive)])  # 27 s
def test_labels_equal_the_evaluation_step_on_the_same_images(run, tta):
    """Whole images at their size (the run's protocol): the segmenter's labels give the eval
    step's confusion matrix exactly, single-scale and multi-scale + flip."""
    workdir, config, _ = run
    segmenter = Segmenter.from_run(workdir, tta=tta)
    images, labels = _images(8)
    model, variables, restored = engine.restore(workdir)
    mesh = sharding.make_mesh()
    step = engine.make_eval_step(model, restored, mesh, scales=segmenter.scales,
                                 flip=segmenter.flip)
    batch = {"image": np.stack([normalize_image(im) for im in images]), "label": np.stack(labels)}
    want = np.asarray(step(jax.device_put(variables, sharding.replicated(mesh)),
                           jax.device_put(batch, sharding.batch_sharding(mesh))))
    n = config.dataset.num_classes
    np.testing.assert_array_equal(_confusion(segmenter, images, labels, n), want)


@pytest.mark.slow  # 19 s
def test_a_recorded_test_resize_is_applied_and_undone_as_evaluate_does(run, tmp_path):
    """A run recording mmseg's keep-ratio test resize and original-size scoring (as converted
    ADE20K runs do): images of mixed sizes through the TensorFlow evaluation pipeline and the
    eval step give the segmenter's confusion matrix exactly; its labels have each image's own
    size; probabilities are distributions whose argmax is the labels."""
    import tensorflow as tf

    from attnzoo.data import pipeline

    workdir, config, _ = run
    overrides = {"dataset.eval_scale": (80, 48), "dataset.eval_label_canvas": (128, 128)}
    model, variables, restored = engine.restore(workdir, config_overrides=overrides)
    segmenter = Segmenter(model, variables, restored)
    images, labels = _images(3)
    crops = [(128, 128), (97, 61), (33, 33)]
    images = [im[:h, :w] for im, (h, w) in zip(images, crops)]
    labels = [lb[:h, :w] for lb, (h, w) in zip(labels, crops)]
    results = segmenter(images, probabilities=True)
    assert [r.labels.shape for r in results] == crops
    for r in results:
        np.testing.assert_allclose(r.probabilities.sum(-1), 1.0, rtol=1e-5)
        assert (r.probabilities.argmax(-1) == r.labels).mean() > 0.999
    assert segmenter.classes == tuple(config_names := restored.dataset.class_names)
    assert len(config_names) == config.dataset.num_classes

    def examples():
        for im, lb in zip(images, labels):
            yield {"image": im, "segmentation_mask": lb[..., None].astype(np.uint8)}

    ds = tf.data.Dataset.from_generator(examples, output_signature={
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "segmentation_mask": tf.TensorSpec((None, None, 1), tf.uint8)})
    mesh = sharding.make_mesh(jax.devices()[:1])
    step = engine.make_eval_step(model, restored, mesh)
    want = 0
    for batch in pipeline.as_numpy(pipeline.eval_dataset(
            ds, batch_size=1, scale=(80, 48), label_canvas=(128, 128))):
        want = want + np.asarray(step(variables, batch))
    n = config.dataset.num_classes
    np.testing.assert_array_equal(_confusion(segmenter, images, labels, n), want)


@pytest.mark.slow  # default run time
def test_any_image_kind_and_size(run, tmp_path):
    """Paths, PIL images of other modes, grey and float arrays, a 1x1 image and the same
    image at two sizes in one call; bad arrays are refused naming the shape or values."""
    from PIL import Image

    from attnzoo import viz

    workdir, _, _ = run
    segmenter = Segmenter.from_run(workdir)
    image, _ = _images(1)
    rgb = image[0]
    path = viz.save_png(tmp_path / "a.png", rgb)
    from_path = segmenter(str(path))
    assert from_path.labels.shape == (128, 128) and from_path.labels.dtype == np.int32
    np.testing.assert_array_equal(segmenter(Image.fromarray(rgb)).labels, from_path.labels)
    np.testing.assert_array_equal(segmenter(rgb.astype(np.float64)).labels, from_path.labels)
    grey = Image.fromarray(rgb).convert("L")
    np.testing.assert_array_equal(segmenter(grey).labels, segmenter(np.asarray(grey)).labels)
    small, big = segmenter([rgb[:1, :1], rgb[:64, :100]])
    assert small.labels.shape == (1, 1) and big.labels.shape == (64, 100)
    assert from_path.colors().shape == (128, 128, 3)
    assert from_path.overlay(rgb).shape == (128, 128, 3)
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) or \(H, W\) array; got shape"):
        segmenter(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="must hold finite 0-255 values"):
        segmenter(np.full((4, 4, 3), 300.0))


@pytest.mark.slow  # default run time
def test_images_of_one_size_go_together_over_the_devices_with_the_same_labels(run, capsys):
    """Eight images of two sizes, batches of 3 over 3 of the 8 simulated devices (and one
    batch of 9, repeated up to 16 over all 8): the labels of one image alone, in the
    caller's order; the progress count on stderr."""
    workdir, _, _ = run
    segmenter = Segmenter.from_run(workdir)
    images, _ = _images(8)
    images = [im if i % 2 else im[:70, :90] for i, im in enumerate(images)]
    together = segmenter(images, batch_size=3, progress=True)
    assert "segmented 8/8 images" in capsys.readouterr().err
    for image, result in zip(images, together):
        np.testing.assert_array_equal(result.labels, segmenter(image).labels)
    same = [images[i % 8] for i in range(1, 20, 2)]  # ten of 128x128: 9 (padded to 16) + 1
    for image, result in zip(same, segmenter(same, batch_size=9)):
        np.testing.assert_array_equal(result.labels, segmenter(image).labels)
    order = [i for i, _ in segmenter.iterate(images, batch_size=3)]
    assert sorted(order) == list(range(8)) and order[:4] == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="batch_size must be positive"):
        segmenter(images, batch_size=-1)
