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

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

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
    z = logits.astype(jnp.float32)
    return jnp.mean(jnp.maximum(z, 0) - z * present + jnp.log1p(jnp.exp(-jnp.abs(z))))


# the pixel losses (``config.loss.name``) and the image-level one a head may declare
PIXEL_LOSSES = ("cross_entropy", "ohem", "dice", "lovasz", "focal")
LOSSES: dict[str, Callable[..., Array]] = {
    "cross_entropy": cross_entropy,
    "ohem": ohem_cross_entropy,
    "dice": dice_loss,
    "lovasz": lovasz_softmax,
    "focal": focal_loss,
    "semantic_encoding": semantic_encoding_loss,
}


def combined_loss(
    outputs: Mapping[str, Array],
    labels: Array,
    terms: Sequence[Mapping[str, Any]],
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Array, dict[str, Array]]:
    """Weighted sum of losses over named model outputs (main, auxiliary, DANet branches,
    EncNet's image-level logits).

    ``terms`` is a list of ``{"output": "aux", "loss": "cross_entropy",
    "weight": 0.4, **loss_kwargs}``. Returns ``(total, {"<output>/<loss>":
    value})``. The outputs of pixel losses must already have the labels' size.
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
        value = LOSSES[name](outputs[output], labels, ignore_index=ignore_index, **term)
        parts[f"{output}/{name}"] = value
        total = total + weight * value
    return total, parts
