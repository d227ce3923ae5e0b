"""Losses for segmentation (jit-able; labels carry ``ignore_index``).

The pixel losses take logits ``(B, H, W, C)`` (any float dtype; computed in
float32) and integer labels ``(B, H, W)``; pixels whose label is
``ignore_index`` contribute nothing, and a batch whose pixels are all
ignored gives 0, not NaN. :func:`semantic_encoding_loss` (EncNet's SE-loss) takes image-level
logits ``(B, C)`` and the same labels. Labels are checked on the host with
:func:`check_labels` (values outside ``[0, C)`` other than the ignore index
are an error); inside ``jit`` they are trusted.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import ops
from attnzoo._checks import check_choice, check_rank

Array = jax.Array
IGNORE_INDEX = 255


def check_labels(labels: Any, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """ValueError naming the offending values if ``labels`` leave ``[0, num_classes)``."""
    values = np.unique(np.asarray(labels))
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        raise ValueError(
            f"labels contain {', '.join(str(v) for v in bad[:10])}; "
            f"num_classes={num_classes} and ignore_index={ignore_index}"
        )


def _check(logits: Array, labels: Array) -> None:
    check_rank(logits, 4, "logits", "B, H, W, C")
    check_rank(labels, 3, "labels", "B, H, W")
    if logits.shape[:3] != labels.shape:
        raise ValueError(
            f"logits {logits.shape} and labels {labels.shape} must share (B, H, W); "
            "resize the logits to the label size first"
        )


def _safe_div(num: Array, den: Array) -> Array:
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _valid_and_safe_labels(labels: Array, ignore_index: int) -> tuple[Array, Array]:
    valid = labels != ignore_index
    return valid, jnp.where(valid, labels, 0)


def cross_entropy(
    logits: Array,
    labels: Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    class_weight: Sequence[float] | Array | None = None,
    pixel_weight: Array | None = None,
) -> Array:
    """Softmax cross-entropy averaged over the non-ignored pixels.

    ``loss = sum_i w_{y_i} m_i (-log p_{i, y_i}) / sum_i w_{y_i} m_i`` with
    class weights ``w`` (default 1) and pixel weights ``m`` (default 1; OHEM
    passes its selection here) — PyTorch's ``F.cross_entropy(weight=...,
    ignore_index=...)`` mean, and mmsegmentation's with ``avg_non_ignore=True``.
    """
    _check(logits, labels)
    valid, safe = _valid_and_safe_labels(labels, ignore_index)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    w = valid.astype(jnp.float32)
    if class_weight is not None:
        cw = jnp.asarray(class_weight, jnp.float32)
        if cw.shape != (logits.shape[-1],):
            raise ValueError(
                f"class_weight has shape {cw.shape}; expected ({logits.shape[-1]},) for "
                f"{logits.shape[-1]} classes"
            )
        w = w * cw[safe]
    if pixel_weight is not None:
        w = w * pixel_weight.astype(jnp.float32)
    return _safe_div((nll * w).sum(), w.sum())


def ohem_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    thresh: float = 0.7,
    min_kept: int = 100000,
    ignore_index: int = IGNORE_INDEX,
    class_weight: Sequence[float] | Array | None = None,
) -> Array:
    """Online hard example mining cross-entropy (CCNet / mmsegmentation's OHEM sampler).

    A valid pixel is kept if the probability of its true class is below
    ``max(thresh, p_(k))``, where ``p_(k)`` is the ``k``-th smallest such
    probability in the batch and ``k = min(min_kept * B, valid pixels)`` —
    so at least ``min_kept`` pixels per image are kept. The loss is the
    cross-entropy averaged over the kept pixels.
    """
    _check(logits, labels)
    if not 0.0 < thresh <= 1.0:
        raise ValueError(f"thresh must be in (0, 1]; got {thresh}")
    valid, safe = _valid_and_safe_labels(labels, ignore_index)
    prob = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
    p_true = jnp.take_along_axis(prob, safe[..., None], axis=-1)[..., 0]
    flat = jnp.where(valid, p_true, jnp.inf).reshape(-1)
    n_valid = valid.sum()
    k = jnp.clip(jnp.minimum(min_kept * labels.shape[0], n_valid), 1, flat.size)
    kth = jnp.sort(flat)[k - 1]
    threshold = jnp.maximum(thresh, jnp.where(n_valid > 0, kth, thresh))
    kept = valid & (p_true < threshold)
    return cross_entropy(logits, labels, ignore_index=ignore_index, class_weight=class_weight,
                         pixel_weight=kept)


def dice_loss(
    logits: Array,
    labels: Array,
    *,
    smooth: float = 1.0,
    exponent: int = 2,
    ignore_index: int = IGNORE_INDEX,
) -> Array:
    """Soft Dice loss (V-Net, Milletari et al. 2016), mmsegmentation's form.

    Per image ``b`` and class ``c`` over the valid pixels:
    ``D_bc = (2 sum p t + smooth) / (sum p^e + sum t^e + smooth)``; the loss
    is ``1 - mean_{b,c} D_bc`` (images without valid pixels excluded).
    """
    _check(logits, labels)
    valid, safe = _valid_and_safe_labels(labels, ignore_index)
    m = valid[..., None].astype(jnp.float32)
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * m
    t = jax.nn.one_hot(safe, logits.shape[-1], dtype=jnp.float32) * m
    num = 2 * (p * t).sum(axis=(1, 2)) + smooth
    den = (p**exponent).sum(axis=(1, 2)) + (t**exponent).sum(axis=(1, 2)) + smooth
    has_pixels = valid.any(axis=(1, 2)).astype(jnp.float32)  # (B,)
    per_image = 1.0 - (num / den).mean(axis=-1)
    return _safe_div((per_image * has_pixels).sum(), has_pixels.sum())


def _lovasz_class_losses(errors: Array, fg: Array) -> Array:
    """Lovász extension of the Jaccard loss per class: ``errors, fg`` are ``(C, N)``."""
    order = jnp.argsort(-errors, axis=-1)
    e = jnp.take_along_axis(errors, order, axis=-1)
    g = jnp.take_along_axis(fg, order, axis=-1)
    gts = g.sum(axis=-1, keepdims=True)
    intersection = gts - jnp.cumsum(g, axis=-1)
    union = gts + jnp.cumsum(1.0 - g, axis=-1)
    jaccard = 1.0 - intersection / union
    grad = jnp.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    return (e * jax.lax.stop_gradient(grad)).sum(axis=-1)


def lovasz_softmax(
    logits: Array,
    labels: Array,
    *,
    classes: str = "present",
    per_image: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> Array:
    """Lovász-softmax loss (Berman et al., CVPR 2018, Algorithm 1 / eq. 12).

    For each class ``c``, the pixel errors ``|1[y = c] - p_c|`` sorted in
    decreasing order are weighted by the increments of the Jaccard loss
    along that order. Averaged over the classes present in the labels
    (``classes="present"``) or all classes (``"all"``); over the whole batch
    or image by image (``per_image``).
    """
    _check(logits, labels)
    check_choice(classes, ("present", "all"), "classes")
    c = logits.shape[-1]
    valid, safe = _valid_and_safe_labels(labels, ignore_index)

    def one(logit: Array, valid: Array, safe: Array) -> tuple[Array, Array]:
        m = valid.reshape(-1).astype(jnp.float32)
        p = jax.nn.softmax(logit.reshape(-1, c).astype(jnp.float32), axis=-1).T  # (C, N)
        fg = jax.nn.one_hot(safe.reshape(-1), c, dtype=jnp.float32).T * m
        losses = _lovasz_class_losses(jnp.abs(fg - p) * m, fg)
        use = (fg.sum(-1) > 0) if classes == "present" else jnp.full((c,), m.sum() > 0)
        use = use.astype(jnp.float32)
        return _safe_div((losses * use).sum(), use.sum()), (use.sum() > 0).astype(jnp.float32)

    if per_image:
        losses, has = jax.vmap(one)(logits, valid, safe)
        return _safe_div((losses * has).sum(), has.sum())
    return one(logits, valid, safe)[0]


def focal_loss(
    logits: Array,
    labels: Array,
    *,
    gamma: float = 2.0,
    alpha: Sequence[float] | Array | float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Array:
    """Softmax focal loss (Lin et al., ICCV 2017, eq. 5), mean over valid pixels.

    ``FL = -alpha_{y} (1 - p_y)^gamma log p_y``; ``alpha`` is a scalar, a
    per-class sequence or None (1).
    """
    _check(logits, labels)
    valid, safe = _valid_and_safe_labels(labels, ignore_index)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp_y = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    loss = -((1.0 - jnp.exp(logp_y)) ** gamma) * logp_y
    if alpha is not None:
        a = jnp.asarray(alpha, jnp.float32)
        loss = loss * (a[safe] if a.ndim == 1 else a)
    m = valid.astype(jnp.float32)
    return _safe_div((loss * m).sum(), m.sum())


def semantic_encoding_loss(
    logits: Array, labels: Array, *, ignore_index: int = IGNORE_INDEX
) -> Array:
    """EncNet's semantic encoding loss (Zhang et al., CVPR 2018, Sec. 3.2): binary cross-entropy
    of image-level logits ``(B, C)`` against which classes the image's labels contain,

        loss = mean_{b, c} BCE(sigmoid(z_bc), [class c occurs in image b]),

    as mmseg's ``EncHead`` (its labels from a histogram of each label map over ``[0, C)``: the
    ignore index, and any other value outside, marks no class)."""
    check_rank(logits, 2, "logits", "B, C")
    check_rank(labels, 3, "labels", "B, H, W")
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} must share B")
    del ignore_index  # labels outside [0, C) hit no class
    num_classes = logits.shape[-1]
    present = (labels.reshape(labels.shape[0], -1, 1) == jnp.arange(num_classes)).any(1)
    return jnp.mean(_sigmoid_bce(logits.astype(jnp.float32), present))


def _sigmoid_bce(x: Array, t: Array) -> Array:
    """``BCE(sigmoid(x), t)`` elementwise from the logits, ``max(x, 0) - x t + log(1 +
    exp(-|x|))`` (PyTorch's ``binary_cross_entropy_with_logits``, stable for any ``x``)."""
    return jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def match_costs(class_logits: Array, point_logits: Array, point_targets: Array, *,
                class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                eps: float = 1.0) -> Array:
    """Mask2Former's matching cost of each query against each class mask of one image
    (``(Q, K)``), from their values at ``P`` shared points:

    .. math:: C_{qk} = -w_c\\,p_q(k) + w_m \\tfrac1P \\sum_i \\mathrm{BCE}(x_{iq}, t_{ik})
              + w_d \\Big(1 - \\frac{2 \\sum_i \\sigma(x_{iq}) t_{ik} + \\epsilon}
              {\\sum_i \\sigma(x_{iq}) + \\sum_i t_{ik} + \\epsilon}\\Big)

    (``p_q`` the softmax of query ``q``'s class logits; mmdet's ``ClassificationCost``,
    ``CrossEntropyLossCost(use_sigmoid=True)`` and ``DiceCost(pred_act=True, naive_dice=True)``).

    Args:
      class_logits: ``(Q, K + 1)`` (the no-object class last).
      point_logits: ``(P, Q)`` the queries' mask logits at the points.
      point_targets: ``(P, K)`` the class masks at the points (in [0, 1]).
    """
    k = point_targets.shape[-1]
    x = point_logits.astype(jnp.float32)
    t = point_targets.astype(jnp.float32)
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), -1)[:, :k]
    bce = (jax.nn.softplus(-x).T @ t + jax.nn.softplus(x).T @ (1 - t)) / x.shape[0]
    return (-class_weight * probs + mask_weight * bce
            + dice_weight * _dice_costs(jax.nn.sigmoid(x), t, eps))


def _dice_costs(p: Array, t: Array, eps: float = 1.0) -> Array:
    """The naive Dice loss of every prediction ``p[:, q]`` against every target ``t[:, k]``
    (``(P, Q)``, ``(P, K)`` over ``P`` points or pixels): ``(Q, K)`` (mmdet's ``DiceCost``)."""
    return 1 - (2 * p.T @ t + eps) / (p.sum(0)[:, None] + t.sum(0)[None, :] + eps)


def match_classes(cost: Array, present: Array) -> Array:
    """The query matched to each class of an image (``(K,)`` int32; meaningful where
    ``present``): a minimum-cost one-to-one matching of the present classes' columns of
    ``cost`` ``(Q, K)`` to distinct queries (:func:`attnzoo.ops.linear_sum_assignment`; at most
    ``Q`` classes may be present). Absent classes take a constant cost above every present one,
    which leaves the present classes' matching that of the rectangular problem without them."""
    big = jnp.max(jnp.where(present[None], cost, -jnp.inf), initial=0.0) + 1.0
    by_class = jnp.where(present[:, None], cost.T, big)  # (K, Q)
    rows, cols = ops.linear_sum_assignment(by_class)
    return jnp.zeros(cost.shape[1], jnp.int32).at[rows].set(cols)


def _uncertain_points(key: Array, logits: Array, num_points: int, oversample_ratio: float,
                      importance_sample_ratio: float) -> Array:
    """Points of the masks ``(N, h, w)`` where their logits are least certain (PointRend's
    sampling, Kirillov et al., CVPR 2020, as mmdet's ``get_uncertain_point_coords_with_
    randomness``): ``oversample_ratio * num_points`` uniform points per mask, the
    ``importance_sample_ratio * num_points`` of them with the smallest ``|logit|``, then uniform
    points for the rest; ``(N, num_points, 2)``."""
    n = logits.shape[0]
    oversampled = int(num_points * oversample_ratio)
    uncertain = int(importance_sample_ratio * num_points)
    k1, k2 = jax.random.split(key)
    candidates = jax.random.uniform(k1, (n, oversampled, 2))
    values = ops.sample_points(logits[..., None], candidates)[..., 0]
    _, index = jax.lax.top_k(-jnp.abs(values), uncertain)
    chosen = jnp.take_along_axis(candidates, index[..., None], axis=1)
    rest = jax.random.uniform(k2, (n, num_points - uncertain, 2))
    return jnp.concatenate([chosen, rest], axis=1)


def _query_class_loss(class_logits: Array, query: Array, present: Array,
                      no_object_weight: float) -> Array:
    """The class cross-entropy of the queries ``(B, Q, K + 1)`` against their matched class
    (``query[b, k]`` the query of present class ``k``) or the no-object class, weighted
    ``no_object_weight`` for the latter, averaged by the weights over the batch (mmdet's
    ``CrossEntropyLoss`` with ``class_weight`` and ``avg_factor`` the weights' sum)."""
    b, q, k = class_logits.shape[0], class_logits.shape[1], class_logits.shape[2] - 1
    target = jnp.full((b, q), k, jnp.int32).at[
        jnp.arange(b)[:, None], jnp.where(present, query, q)].set(
        jnp.broadcast_to(jnp.arange(k), (b, k)), mode="drop")
    w = jnp.where(target == k, no_object_weight, 1.0)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(class_logits, -1), target[..., None], -1)[..., 0]
    return jnp.sum(w * ce) / jnp.sum(w)


def _present_classes(labels: Array, num_classes: int, ignore_index: int) -> tuple[Array, Array]:
    """``labels`` with the ignore index as ``num_classes`` (in no class mask), and which classes
    each image contains ``(B, K)``."""
    labels = jnp.where(labels == ignore_index, num_classes, labels)
    present = (labels.reshape(labels.shape[0], -1, 1) == jnp.arange(num_classes)).any(1)
    return labels, present


def _dice(p: Array, t: Array, eps: float = 1.0) -> Array:
    """``1 - (2 sum p t + eps) / (sum p + sum t + eps)`` over the last axis (naive Dice)."""
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def mask_set_loss(sets: Mapping[str, Array], labels: Array, *, key: Array,
                  ignore_index: int = IGNORE_INDEX, num_points: int = 12544,
                  oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                  class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                  no_object_weight: float = 0.1, match_points: Array | None = None,
                  loss_points: Array | None = None) -> Array:
    """Mask2Former's set loss (Cheng et al., CVPR 2022, Sec. 3.2 / 4; mmdet's
    ``Mask2FormerHead.loss_by_feat`` on mmseg's semantic targets), summed over the prediction
    sets of every decoder layer (deep supervision).

    The targets of an image are the masks of the classes its labels contain (the ignore index
    in none). For each set and image, the queries are matched one-to-one to those masks by
    :func:`match_classes` on :func:`match_costs` at ``num_points`` uniform points
    (``match_points``), without gradient; then

    * ``class_weight`` x cross-entropy of every query's class logits against its matched class
      or the no-object class, weighted ``no_object_weight`` for the latter, averaged by those
      weights over the batch;
    * ``mask_weight`` x sigmoid BCE and ``dice_weight`` x Dice (``1 - (2 sum p t + 1) / (sum p
      + sum t + 1)``) of each matched query's mask against its class mask at ``num_points``
      points per mask where the prediction is least certain (:func:`_uncertain_points`;
      ``loss_points``), summed over the batch's masks and divided by their count (BCE also by
      ``num_points``).

    Predictions are sampled at the points on their own grid, targets on the labels' grid
    (bilinear, as mmcv's ``point_sample``). Random points come from ``key``; the batch is the
    global one (mmdet averages each device's loss).

    Args:
      sets: ``"classes"`` ``(B, L, Q, K + 1)`` and ``"masks"`` ``(B, L, h, w, Q)`` logits of
        ``L`` prediction sets.
      labels: ``(B, H, W)`` integer labels.
      key: the random points' key.
      match_points, loss_points: ``(P, 2)`` points to use instead of random ones (the same for
        every image and mask; tests).

    Returns:
      The scalar loss (float32).
    """
    classes, masks = sets["classes"].astype(jnp.float32), sets["masks"].astype(jnp.float32)
    check_rank(classes, 4, "classes", "B, L, Q, K + 1")
    check_rank(masks, 5, "masks", "B, L, h, w, Q")
    check_rank(labels, 3, "labels", "B, H, W")
    b, num_sets, k = classes.shape[0], classes.shape[1], classes.shape[3] - 1
    labels, present = _present_classes(labels, k, ignore_index)
    count = jnp.maximum(present.sum(), 1).astype(jnp.float32)
    total = jnp.zeros((), jnp.float32)
    for layer in range(num_sets):
        key, match_key, loss_key = jax.random.split(key, 3)
        cls, mask = classes[:, layer], masks[:, layer]  # (B, Q, K+1), (B, h, w, Q)
        points = (jax.random.uniform(match_key, (b, num_points, 2)) if match_points is None
                  else jnp.broadcast_to(match_points, (b, *match_points.shape)))
        cost = jax.vmap(functools.partial(
            match_costs, class_weight=class_weight, mask_weight=mask_weight,
            dice_weight=dice_weight))(cls, ops.sample_points(mask, points),
                                      ops.sample_labels(labels, points, k))
        query = jax.lax.stop_gradient(jax.vmap(match_classes)(cost, present))  # (B, K)
        total = total + class_weight * _query_class_loss(cls, query, present, no_object_weight)
        # each class slot's matched mask (B K, h, w), its points and targets there
        matched = jnp.moveaxis(jnp.take_along_axis(mask, query[:, None, None, :], -1), -1, 1)
        matched = matched.reshape(b * k, *mask.shape[1:3])
        pts = (_uncertain_points(loss_key, jax.lax.stop_gradient(matched), num_points,
                                 oversample_ratio, importance_sample_ratio)
               if loss_points is None
               else jnp.broadcast_to(loss_points, (b * k, *loss_points.shape)))
        x = ops.sample_points(matched[..., None], pts)[..., 0].reshape(b, k, -1)
        t = ops.sample_label_masks(labels, jax.lax.stop_gradient(pts).reshape(b, k, -1, 2),
                                   jnp.broadcast_to(jnp.arange(k), (b, k)))
        bce = jnp.mean(_sigmoid_bce(x, t), -1)
        dice = _dice(jax.nn.sigmoid(x), t)
        total = total + (mask_weight * jnp.sum(jnp.where(present, bce, 0.0))
                         + dice_weight * jnp.sum(jnp.where(present, dice, 0.0))) / count
    return total


def maskformer_set_loss(sets: Mapping[str, Array], labels: Array, *,
                        ignore_index: int = IGNORE_INDEX, class_weight: float = 1.0,
                        focal_weight: float = 20.0, dice_weight: float = 1.0,
                        no_object_weight: float = 0.1, alpha: float = 0.25,
                        gamma: float = 2.0) -> Array:
    """MaskFormer's set loss (Cheng et al., NeurIPS 2021, Sec. 3.2; mmdet's
    ``MaskFormerHead.loss_by_feat`` on mmseg's semantic targets), summed over the prediction
    sets of every decoder layer.

    For each set and image the queries are matched one-to-one to the masks of the classes the
    labels contain (:func:`match_classes`) on the cost ``-class_weight p_q(k) + focal_weight
    focal + dice_weight Dice``, computed on the whole predicted masks against the class masks
    downsampled (nearest, PyTorch's) to their size: the focal cost ``(1/n) sum_i [t FL^+ +
    (1 - t) FL^-]`` with ``FL^+ = -alpha (1 - p)^gamma log(p + 1e-12)``, ``FL^- = -(1 - alpha)
    p^gamma log(1 - p + 1e-12)`` (mmdet's ``FocalLossCost(binary_input=True)``). Then the class
    cross-entropy as :func:`mask_set_loss`, and the matched masks upsampled (bilinear) to the
    labels' size against their class masks there: ``focal_weight`` x the sigmoid focal loss
    (averaged over the batch's masks and pixels) and ``dice_weight`` x Dice (over the masks).

    Args:
      sets: ``"classes"`` ``(B, L, Q, K + 1)`` and ``"masks"`` ``(B, L, h, w, Q)`` logits.
      labels: ``(B, H, W)`` integer labels.

    Returns:
      The scalar loss (float32).
    """
    classes, masks = sets["classes"].astype(jnp.float32), sets["masks"].astype(jnp.float32)
    check_rank(classes, 4, "classes", "B, L, Q, K + 1")
    check_rank(masks, 5, "masks", "B, L, h, w, Q")
    check_rank(labels, 3, "labels", "B, H, W")
    b, k = classes.shape[0], classes.shape[3] - 1
    h, w = masks.shape[2:4]
    height, width = labels.shape[1:]
    labels, present = _present_classes(labels, k, ignore_index)
    count = jnp.maximum(present.sum(), 1).astype(jnp.float32)
    small = labels[:, ops.nearest_index(height, h)][:, :, ops.nearest_index(width, w)]
    small = jax.nn.one_hot(small.reshape(b, h * w), k, dtype=jnp.float32)  # (B, hw, K)
    full = (labels[:, None] == jnp.arange(k)[None, :, None, None]).astype(jnp.float32)

    def focal(x: Array, t: Array) -> Array:
        p = jax.nn.sigmoid(x)
        modulation = (alpha * t + (1 - alpha) * (1 - t)) * ((1 - p) * t + p * (1 - t)) ** gamma
        return _sigmoid_bce(x, t) * modulation

    def costs(cls: Array, x: Array, t: Array) -> Array:  # (Q, K+1), (hw, Q), (hw, K)
        p = jax.nn.sigmoid(x)
        pos = -jnp.log(p + 1e-12) * alpha * (1 - p) ** gamma
        neg = -jnp.log(1 - p + 1e-12) * (1 - alpha) * p ** gamma
        focal_cost = (pos.T @ t + neg.T @ (1 - t)) / x.shape[0]
        probs = jax.nn.softmax(cls, -1)[:, :k]
        return -class_weight * probs + focal_weight * focal_cost + dice_weight * _dice_costs(p, t)

    total = jnp.zeros((), jnp.float32)
    for layer in range(classes.shape[1]):
        cls, mask = classes[:, layer], masks[:, layer]  # (B, Q, K+1), (B, h, w, Q)
        cost = jax.vmap(costs)(cls, mask.reshape(b, h * w, -1), small)
        query = jax.lax.stop_gradient(jax.vmap(match_classes)(cost, present))  # (B, K)
        total = total + class_weight * _query_class_loss(cls, query, present, no_object_weight)
        matched = ops.interpolate(jnp.take_along_axis(mask, query[:, None, None, :], -1),
                                  (height, width))  # (B, H, W, K)
        x = jnp.moveaxis(matched, -1, 1).reshape(b, k, -1)
        t = full.reshape(b, k, -1)
        per_mask_focal = focal(x, t).mean(-1)
        dice = _dice(jax.nn.sigmoid(x), t)
        total = total + (focal_weight * jnp.sum(jnp.where(present, per_mask_focal, 0.0))
                         + dice_weight * jnp.sum(jnp.where(present, dice, 0.0))) / count
    return total


# the pixel losses (``config.loss.name``) and the image-level one a head may declare
PIXEL_LOSSES = ("cross_entropy", "ohem", "dice", "lovasz", "focal")
LOSSES: dict[str, Callable[..., Array]] = {
    "cross_entropy": cross_entropy,
    "ohem": ohem_cross_entropy,
    "dice": dice_loss,
    "lovasz": lovasz_softmax,
    "focal": focal_loss,
    "semantic_encoding": semantic_encoding_loss,
    "mask_set": mask_set_loss,
    "maskformer_set": maskformer_set_loss,
}
# the losses that draw random numbers: combined_loss gives them a key
RANDOM_LOSSES = ("mask_set",)


def combined_loss(
    outputs: Mapping[str, Array],
    labels: Array,
    terms: Sequence[Mapping[str, Any]],
    *,
    ignore_index: int = IGNORE_INDEX,
    key: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Weighted sum of losses over named model outputs (main, auxiliary, DANet branches,
    EncNet's image-level logits, Mask2Former's prediction sets).

    ``terms`` is a list of ``{"output": "aux", "loss": "cross_entropy",
    "weight": 0.4, **loss_kwargs}``. Returns ``(total, {"<output>/<loss>":
    value})``. The outputs of pixel losses must already have the labels' size. ``key``: the
    random key of the losses that sample (:data:`RANDOM_LOSSES`), each term its own stream.
    """
    total = jnp.zeros((), jnp.float32)
    parts: dict[str, Array] = {}
    for term in terms:
        term = dict(term)
        output, name = term.pop("output"), term.pop("loss", "cross_entropy")
        weight = float(term.pop("weight", 1.0))
        if output not in outputs:
            raise ValueError(f"loss term names output {output!r}; the model gives {sorted(outputs)}")
        check_choice(name, tuple(LOSSES), "loss")
        if name in RANDOM_LOSSES:
            if key is None:
                raise ValueError(f"loss {name!r} (output {output!r}) samples points: "
                                 "combined_loss needs a key")
            term["key"] = jax.random.fold_in(key, len(parts))
        value = LOSSES[name](outputs[output], labels, ignore_index=ignore_index, **term)
        parts[f"{output}/{name}"] = value
        total = total + weight * value
    return total, parts
