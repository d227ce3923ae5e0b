"""Segmentation metrics from a streaming confusion matrix (mmsegmentation's definitions).

``confusion_matrix`` is jit-able and works on sharded batches (under
``jax.jit`` the counts are global); sum the matrices of all batches, then
call :func:`segmentation_metrics` once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo._checks import check_positive

Array = jax.Array


def confusion_matrix(pred: Array, labels: Array, num_classes: int,
                     ignore_index: int = 255) -> Array:
    """``(C, C)`` int32 counts, ``[true, predicted]``, over the non-ignored pixels.

    Labels outside ``[0, C)`` that are not ``ignore_index`` are not counted
    (check them on the host with :func:`attnzoo.losses.check_labels`).
    """
    check_positive(num_classes, "num_classes")
    if pred.shape != labels.shape:
        raise ValueError(f"pred {pred.shape} and labels {labels.shape} must have one shape")
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    index = jnp.where(valid, labels * num_classes + pred, num_classes * num_classes)
    counts = jnp.bincount(index.reshape(-1).astype(jnp.int32), length=num_classes**2 + 1)
    return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def segmentation_metrics(confusion: Any) -> dict[str, Any]:
    """mIoU, mAcc, aAcc, mDice and per-class IoU / Acc / Dice from a confusion matrix.

    Per class ``c``: ``IoU = TP / (TP + FP + FN)``, ``Acc = TP / (TP + FN)``,
    ``Dice = 2 TP / (2 TP + FP + FN)``. A class absent from both the labels
    and the predictions has no IoU or Dice (NaN) and is excluded from the
    means; a class absent from the labels has no Acc. ``aAcc`` is the
    fraction of all valid pixels predicted right. Computed in float64 on the
    host.
    """
    cm = np.asarray(confusion, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square matrix; got shape {cm.shape}")
    tp = np.diag(cm)
    label_area, pred_area = cm.sum(1), cm.sum(0)
    union = label_area + pred_area - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(label_area > 0, tp / label_area, np.nan)
        dice = np.where(union > 0, 2 * tp / (label_area + pred_area), np.nan)
    total = cm.sum()

    def nanmean(v: np.ndarray) -> float:
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    return {
        "mIoU": nanmean(iou), "mAcc": nanmean(acc), "mDice": nanmean(dice),
        "aAcc": float(tp.sum() / total) if total else float("nan"),
        "IoU": iou, "Acc": acc, "Dice": dice,
    }
