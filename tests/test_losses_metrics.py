"""Losses and metrics against numpy references written from their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import losses, metrics

C, IGN = 5, 255


def sample(seed=0, b=2, h=6, w=7, ignore_frac=0.2):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((b, h, w, C)) * 2).astype(np.float32)
    labels = rng.integers(0, C, (b, h, w)).astype(np.int32)
    labels[rng.random((b, h, w)) < ignore_frac] = IGN
    return logits, labels


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_nll(logits, labels):
    p = np_softmax(logits.astype(np.float64))
    out = np.zeros(labels.shape)
    for idx in np.ndindex(labels.shape):
        if labels[idx] != IGN:
            out[idx] = -np.log(p[idx][labels[idx]])
    return out, p


def test_cross_entropy_with_class_weights():
    logits, labels = sample()
    nll, _ = np_nll(logits, labels)
    cw = np.array([1.0, 2.0, 0.5, 1.5, 3.0])
    valid = labels != IGN
    w = np.where(valid, cw[np.where(valid, labels, 0)], 0)
    want = (nll * w).sum() / w.sum()
    got = losses.cross_entropy(logits, labels, class_weight=cw)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    plain = (nll * valid).sum() / valid.sum()
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), plain, rtol=1e-5)


@pytest.mark.parametrize("name", losses.PIXEL_LOSSES)
def test_all_ignored_gives_zero_and_ignored_pixels_contribute_nothing(name):
    logits, labels = sample(1)
    fn = losses.LOSSES[name]
    all_ignored = np.full_like(labels, IGN)
    value = fn(logits, all_ignored)
    assert float(value) == 0.0
    grads = jax.grad(lambda lg: fn(lg, all_ignored))(jnp.asarray(logits))
    assert np.isfinite(grads).all() and np.abs(grads).max() == 0
    # Changing logits at ignored pixels changes nothing.
    base = fn(logits, labels)
    changed = logits.copy()
    changed[labels == IGN] += 5.0
    np.testing.assert_allclose(fn(changed, labels), base, rtol=1e-6)


def test_semantic_encoding_loss_is_the_binary_cross_entropy_of_class_presence():
    """Sigmoid cross-entropy of (B, C) logits against the classes each image's labels hold
    (the ignore index marks none), averaged over images and classes; numpy reference."""
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((2, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 3, (2, 6, 7))
    labels[1, :3] = IGN
    labels[1, 3:] = 4
    present = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 1]], np.float64)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    want = -(present * np.log(p) + (1 - present) * np.log(1 - p)).mean()
    got = jax.jit(losses.semantic_encoding_loss)(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert set(losses.LOSSES) == {*losses.PIXEL_LOSSES, "semantic_encoding", "mask_set",
                                  "maskformer_set"}
    with pytest.raises(ValueError, match="logits must have rank 2"):
        losses.semantic_encoding_loss(jnp.zeros((2, 6, 7, 5)), jnp.asarray(labels))


@pytest.mark.parametrize("min_kept,thresh", [(5, 0.7), (1000, 0.7), (3, 0.05)])
def test_ohem_reference(min_kept, thresh):
    logits, labels = sample(2)
    nll, p = np_nll(logits, labels)
    valid = labels != IGN
    p_true = np.array([p[idx][labels[idx]] for idx in zip(*np.nonzero(valid))])
    k = min(min_kept * labels.shape[0], valid.sum())
    threshold = max(thresh, np.sort(p_true)[k - 1])
    kept = np.zeros_like(valid)
    kept[valid] = p_true < threshold
    want = nll[kept].mean()
    got = losses.ohem_cross_entropy(logits, labels, thresh=thresh, min_kept=min_kept)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_dice_reference():
    logits, labels = sample(3)
    p = np_softmax(logits.astype(np.float64))
    per_image = []
    for b in range(labels.shape[0]):
        m = labels[b] != IGN
        scores = []
        for c in range(C):
            pc = p[b, ..., c][m]
            tc = (labels[b][m] == c).astype(float)
            scores.append((2 * (pc * tc).sum() + 1) / ((pc**2).sum() + (tc**2).sum() + 1))
        per_image.append(1 - np.mean(scores))
    np.testing.assert_allclose(losses.dice_loss(logits, labels), np.mean(per_image), rtol=1e-5)


def np_lovasz(p, labels, classes="present"):
    """Berman et al. Algorithm 1, with loops."""
    m = labels != IGN
    p, labels = p[m], labels[m]
    out = []
    for c in range(C):
        fg = (labels == c).astype(float)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = np.abs(fg - p[:, c])
        order = np.argsort(-errors, kind="stable")
        e, g = errors[order], fg[order]
        jac = []
        for i in range(len(g)):
            inter = g.sum() - g[: i + 1].sum()
            union = g.sum() + (1 - g[: i + 1]).sum()
            jac.append(1 - inter / union)
        jac = np.array(jac)
        grad = np.concatenate([jac[:1], np.diff(jac)])
        out.append((e * grad).sum())
    return np.mean(out)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_reference(classes, per_image):
    logits, labels = sample(4)
    labels[labels == 3] = 1  # class 3 absent: "present" and "all" differ
    p = np_softmax(logits.astype(np.float64))
    if per_image:
        want = np.mean([np_lovasz(p[b], labels[b], classes) for b in range(2)])
    else:
        want = np_lovasz(p.reshape(-1, C), labels.reshape(-1), classes)
    got = losses.lovasz_softmax(logits, labels, classes=classes, per_image=per_image)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_focal_reference():
    logits, labels = sample(5)
    _, p = np_nll(logits, labels)
    alpha = np.array([0.25, 0.5, 0.75, 1.0, 0.1])
    vals = [-alpha[labels[i]] * (1 - p[i][labels[i]]) ** 2 * np.log(p[i][labels[i]])
            for i in np.ndindex(labels.shape) if labels[i] != IGN]
    np.testing.assert_allclose(losses.focal_loss(logits, labels, alpha=alpha), np.mean(vals),
                               rtol=1e-5)
    nll, _ = np_nll(logits, labels)
    np.testing.assert_allclose(losses.focal_loss(logits, labels, gamma=0.0),
                               nll[labels != IGN].mean(), rtol=1e-5)


def test_combined_loss_weights_outputs():
    logits, labels = sample(6)
    outputs = {"out": logits, "aux": logits * 0.5}
    terms = [{"output": "out", "loss": "cross_entropy", "weight": 1.0},
             {"output": "aux", "loss": "cross_entropy", "weight": 0.4},
             {"output": "out", "loss": "lovasz", "weight": 0.5, "per_image": True}]
    total, parts = losses.combined_loss(outputs, labels, terms)
    want = (losses.cross_entropy(logits, labels) + 0.4 * losses.cross_entropy(logits * 0.5, labels)
            + 0.5 * losses.lovasz_softmax(logits, labels, per_image=True))
    np.testing.assert_allclose(total, want, rtol=1e-6)
    assert set(parts) == {"out/cross_entropy", "aux/cross_entropy", "out/lovasz"}
    with pytest.raises(ValueError, match="names output 'pam'"):
        losses.combined_loss(outputs, labels, [{"output": "pam"}])


def test_bad_labels_and_shapes():
    with pytest.raises(ValueError, match="labels contain -1, 300; num_classes=19 and ignore_index=255"):
        losses.check_labels(np.array([0, 5, 300, 255, -1]), 19)
    losses.check_labels(np.array([0, 18, 255]), 19)
    logits, labels = sample(7)
    with pytest.raises(ValueError, match="must share \\(B, H, W\\)"):
        losses.cross_entropy(logits, labels[:, :-1])
    with pytest.raises(ValueError, match="class_weight"):
        losses.cross_entropy(logits, labels, class_weight=[1.0, 2.0])


# -- metrics ------------------------------------------------------------------------------------


def np_metrics(pred, labels, n):
    cm = np.zeros((n, n))
    for t, p in zip(labels.ravel(), pred.ravel()):
        if t != IGN:
            cm[t, p] += 1
    iou, acc, dice = [], [], []
    for c in range(n):
        tp, fn, fp = cm[c, c], cm[c].sum() - cm[c, c], cm[:, c].sum() - cm[c, c]
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
        acc.append(tp / (tp + fn) if tp + fn else np.nan)
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
    return cm, np.array(iou), np.array(acc), np.array(dice)


def test_confusion_and_metrics_reference():
    rng = np.random.default_rng(8)
    n = 6
    labels = rng.integers(0, n - 1, (3, 10, 11))  # class 5 never in the labels
    labels[rng.random(labels.shape) < 0.1] = IGN
    pred = rng.integers(0, n - 2, labels.shape)  # classes 4 and 5 never predicted
    cm = np.asarray(jax.jit(metrics.confusion_matrix, static_argnums=2)(pred, labels, n))
    want_cm, iou, acc, dice = np_metrics(pred, labels, n)
    np.testing.assert_array_equal(cm, want_cm)
    got = metrics.segmentation_metrics(cm)
    np.testing.assert_allclose(got["IoU"], iou)
    assert np.isnan(got["IoU"][5]) and np.isnan(got["Acc"][5]) and got["IoU"][4] == 0
    np.testing.assert_allclose(got["mIoU"], np.nanmean(iou))
    np.testing.assert_allclose(got["mAcc"], np.nanmean(acc))
    np.testing.assert_allclose(got["mDice"], np.nanmean(dice))
    np.testing.assert_allclose(got["aAcc"], np.trace(want_cm) / want_cm.sum())


def test_streaming_confusion_on_sharded_batches_equals_whole():
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 4, (16, 8, 8))
    pred = rng.integers(0, 4, (16, 8, 8))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    fn = jax.jit(metrics.confusion_matrix, static_argnums=2)
    total = sum(fn(jax.device_put(pred[i:i + 8], sharding), jax.device_put(labels[i:i + 8], sharding), 4)
                for i in (0, 8))
    np.testing.assert_array_equal(total, np_metrics(pred, labels, 4)[0])
