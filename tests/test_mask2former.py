"""Mask2Former: its ops against loops and scipy (bilinear point sampling, multi-scale deformable
attention, masked attention, the assignment), its position embedding against mmdet's, and the
model against mmseg/mmdet's own (built from mmseg's configs, random weights, odd sizes, float64
reference): the semantic scores and every decoder layer's class and mask predictions.

Tolerance of the model: max(1e-4, 2x PyTorch's own float32 error) of the largest value, as
``test_mmseg.compare``; of the ops: 1e-5 (float32 against float64 loops)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import randomize_torch

from attnzoo import models, ops
from attnzoo.convert import from_mmseg
from attnzoo.heads.mask2former import semantic_scores, sine_position_embedding


def _bilinear_loop(x, px, py):
    """grid_sample(align_corners=False, zeros) of one (H, W, C) map at one normalised point."""
    h, w, c = x.shape
    u, v = px * w - 0.5, py * h - 0.5
    out = np.zeros(c)
    for ui in (np.floor(u), np.floor(u) + 1):
        for vj in (np.floor(v), np.floor(v) + 1):
            if 0 <= ui < w and 0 <= vj < h:
                out += (1 - abs(u - ui)) * (1 - abs(v - vj)) * x[int(vj), int(ui)]
    return out


def test_sample_points_equals_a_loop():
    """Points inside, on the border and outside (zero padding), as grid_sample."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7, 3))
    points = rng.uniform(-0.2, 1.2, (2, 40, 2))
    out = np.asarray(ops.sample_points(jnp.asarray(x, jnp.float32), jnp.asarray(points)))
    ref = np.array([[_bilinear_loop(x[b], *points[b, p]) for p in range(40)] for b in range(2)])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert np.abs(ref).max() > 0.5 and (ref == 0).all(-1).any()  # some points fall outside


def test_sample_points_equals_torch_grid_sample():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 9, 4))
    points = rng.uniform(-0.1, 1.1, (2, 30, 2))
    ref = torch.nn.functional.grid_sample(
        torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(2 * points - 1)[:, :, None],
        mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0].permute(0, 2, 1)
    out = ops.sample_points(jnp.asarray(x, jnp.float32), jnp.asarray(points, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), ref.numpy(), atol=1e-5)


def test_multi_scale_deformable_attention_equals_a_loop():
    rng = np.random.default_rng(2)
    b, q, m, d, k = 2, 5, 3, 4, 2
    shapes = [(6, 8), (3, 4)]
    values = [rng.standard_normal((b, h, w, m, d)) for h, w in shapes]
    locations = rng.uniform(-0.1, 1.1, (b, q, m, len(shapes), k, 2))
    weights = rng.uniform(0, 1, (b, q, m, len(shapes), k))
    out = ops.multi_scale_deformable_attention(
        [jnp.asarray(v, jnp.float32) for v in values], jnp.asarray(locations, jnp.float32),
        jnp.asarray(weights, jnp.float32))
    ref = np.zeros((b, q, m, d))
    for bi in range(b):
        for qi in range(q):
            for mi in range(m):
                for li in range(len(shapes)):
                    for ki in range(k):
                        ref[bi, qi, mi] += weights[bi, qi, mi, li, ki] * _bilinear_loop(
                            values[li][bi, :, :, mi], *locations[bi, qi, mi, li, ki])
    np.testing.assert_allclose(np.asarray(out), ref.reshape(b, q, m * d), atol=1e-5)


def test_multi_scale_deformable_attention_equals_mmcvs():
    """Against mmcv's own pure-PyTorch ``multi_scale_deformable_attn_pytorch`` (what mmcv runs
    on CPU), on its layout: values ``(B, sum HW, M, D)``, locations ``(B, Q, M, L, K, 2)``."""
    torch = pytest.importorskip("torch")
    mmseg_support = pytest.importorskip("mmseg_support")
    pytest.importorskip("mmcv")
    mmseg_support.install_mmcv_ops()
    import sys

    reference = sys.modules["mmcv.ops.multi_scale_deform_attn"].multi_scale_deformable_attn_pytorch
    rng = np.random.default_rng(3)
    b, q, m, d, k = 2, 7, 2, 3, 4
    shapes = [(5, 7), (3, 4), (2, 2)]
    values = [rng.standard_normal((b, h, w, m, d)) for h, w in shapes]
    locations = rng.uniform(0, 1, (b, q, m, 3, k, 2))
    weights = rng.uniform(0, 1, (b, q, m, 3, k))
    flat = np.concatenate([v.reshape(b, -1, m, d) for v in values], 1)
    ref = reference(torch.tensor(flat), torch.tensor(shapes), torch.tensor(locations),
                    torch.tensor(weights)).numpy()
    out = ops.multi_scale_deformable_attention(
        [jnp.asarray(v, jnp.float32) for v in values], jnp.asarray(locations, jnp.float32),
        jnp.asarray(weights, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_masked_attention_equals_a_loop_and_empty_masks_attend_everywhere():
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, n, 4)) for n in (6, 9, 9))
    mask = rng.uniform(size=(2, 6, 9)) < 0.4
    mask[0, 2] = False  # a query whose mask is empty
    out = np.asarray(ops.masked_attention(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)),
                                          jnp.asarray(mask)))
    for b in range(2):
        for i in range(6):
            keep = mask[b, i] if mask[b, i].any() else np.ones(9, bool)
            s = q[b, i] @ k[b].T / 2.0
            w = np.where(keep, np.exp(s - s[keep].max()), 0.0)
            np.testing.assert_allclose(out[b, i], (w / w.sum()) @ v[b], atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (5, 9), (9, 5), (30, 100), (100, 100)])
def test_assignment_equals_scipys(shape):
    """jitted, and under vmap for a batch, on random matrices (a unique optimum)."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(sum(shape))
    costs = rng.standard_normal((3, *shape)).astype(np.float32)
    rows, cols = jax.jit(jax.vmap(ops.linear_sum_assignment))(jnp.asarray(costs))
    for c, r, col in zip(costs, np.asarray(rows), np.asarray(cols)):
        ref_rows, ref_cols = linear_sum_assignment(c)
        np.testing.assert_array_equal(r, ref_rows)
        np.testing.assert_array_equal(col, ref_cols)


def test_assignment_of_integer_costs_and_bad_input():
    from scipy.optimize import linear_sum_assignment

    cost = np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]])
    rows, cols = ops.linear_sum_assignment(jnp.asarray(cost))
    ref_rows, ref_cols = linear_sum_assignment(cost)
    assert cost[np.asarray(rows), np.asarray(cols)].sum() == cost[ref_rows, ref_cols].sum()
    with pytest.raises(ValueError, match="cost"):
        ops.linear_sum_assignment(jnp.zeros((2, 3, 4)))


def test_sine_position_embedding_equals_mmdets():
    torch = pytest.importorskip("torch")
    pytest.importorskip("mmdet")
    mmseg_support = pytest.importorskip("mmseg_support")
    mmseg_support.install_mmcv_ops()
    from mmdet.models.layers import SinePositionalEncoding

    ref = SinePositionalEncoding(num_feats=16, normalize=True)(
        torch.zeros((1, 5, 7), dtype=torch.bool)).permute(0, 2, 3, 1).reshape(35, 32)
    np.testing.assert_allclose(sine_position_embedding(5, 7, 16), ref.numpy(), atol=1e-6)


def test_semantic_scores_drop_the_no_object_class():
    rng = np.random.default_rng(5)
    cls, masks = rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 2, 2, 4))
    p = np.exp(cls) / np.exp(cls).sum(-1, keepdims=True)
    ref = np.einsum("bqk,bhwq->bhwk", p[..., :-1], 1 / (1 + np.exp(-masks)))
    np.testing.assert_allclose(np.asarray(semantic_scores(jnp.asarray(cls), jnp.asarray(masks))),
                               ref, atol=1e-6)


def _compare(stem, size, seed=0):
    """attnzoo (float32) against mmseg's model (float64): the semantic scores of
    ``encode_decode`` and each decoder layer's class and mask logits (mmdet's head forward),
    within max(1e-4, 2x PyTorch's float32 error) of each's largest value; and the layers'
    attention masks (Mask2Former's) keep some but not all positions on at least 5 of the 9
    layers (the masking is exercised)."""
    torch = pytest.importorskip("torch")
    mmseg_support = pytest.importorskip("mmseg_support")
    pytest.importorskip("mmdet", reason="mmseg's query heads are mmdet's (the mmseg test extra)")
    model, _ = mmseg_support.build(stem)
    randomize_torch(model, seed)
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    x = np.random.default_rng(seed).standard_normal((2, 3, *size))
    meta = [{"img_shape": size, "batch_input_shape": size}] * 2

    def reference(dtype):
        from mmseg.structures import SegDataSample

        model.to(dtype)
        images = torch.tensor(x, dtype=dtype)
        with torch.no_grad():
            scores = model.encode_decode(images, meta).numpy().transpose(0, 2, 3, 1)
            layers = model.decode_head(model.extract_feat(images),
                                       [SegDataSample(metainfo=m) for m in meta])
        return [scores] + [t.numpy() for t in layers[0]] + [
            t.numpy().transpose(0, 2, 3, 1) for t in layers[1]]

    ref32, ref = reference(torch.float32), reference(torch.float64)
    ours, variables = from_mmseg(stem, state_dict)
    out, state = jax.jit(lambda v, im: ours.apply(v, im, mutable=["intermediates"]))(
        variables, x.transpose(0, 2, 3, 1).astype(np.float32))
    predictions = state["intermediates"]["head"]["predictions"][0]
    mine = [out["out"]] + [c for c, _ in predictions] + [m for _, m in predictions]
    n = len(predictions)
    assert len(mine) == len(ref) == 1 + 2 * n
    names = ["scores"] + [f"classes {i}" for i in range(n)] + [f"masks {i}" for i in range(n)]
    for name, a, r, r32 in zip(names, mine, ref, ref32, strict=True):
        scale = np.abs(r).max()
        torch_err = np.abs(r32 - r).max() / scale
        err = np.abs(np.asarray(a) - r).max() / scale
        assert err <= max(1e-4, 2 * torch_err), f"{stem} {name}: {err:.2e} ({torch_err:.2e})"
    if stem.startswith("mask2former"):
        kept = [float((m >= 0).mean()) for m in ref[11:20]]
        assert sum(0.05 < k < 0.95 for k in kept) >= 5, kept


def test_mask2former_r50_equals_mmsegs_with_every_layers_predictions():
    _compare("mask2former_r50_8xb2-90k_cityscapes-512x1024", (51, 75))


def test_maskformer_r50_equals_mmsegs_with_every_layers_predictions():
    _compare("maskformer_r50-d32_8xb2-160k_ade20k-512x512", (51, 75))


@pytest.mark.slow
def test_maskformer_swin_t_equals_mmsegs_with_every_layers_predictions():
    _compare("maskformer_swin-t_upernet_8xb2-160k_ade20k-512x512", (67, 59), seed=1)


@pytest.mark.slow
def test_mask2former_swin_t_equals_mmsegs_with_every_layers_predictions():
    _compare("mask2former_swin-t_8xb2-160k_ade20k-512x512", (67, 59), seed=1)


def test_mask2former_models_and_their_refusals():
    assert set(models.list_models("mask2former_*")) == {
        f"mask2former_{b}" for b in ("r50", "r101", "swin_t", "swin_s", "swin_b_w12",
                                     "swin_l_w12")}
    with pytest.raises(ValueError, match="channels"):
        models.create("mask2former_r50", num_classes=3, head_kwargs={"channels": 40})
    with pytest.raises(ValueError, match="list of backbone features"):
        models.get_spec("mask2former_r50").build(num_classes=3).head.clone(parent=None).init(
            jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


def _mmseg_head(stem):
    """mmseg's decode head of config ``stem`` alone (its losses need no backbone)."""
    mmseg_support = pytest.importorskip("mmseg_support")
    pytest.importorskip("mmdet", reason="mmseg's query heads are mmdet's (the mmseg test extra)")
    mmseg_support.install_mmcv_ops()
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    return MODELS.build(mmseg_support.model_config(stem)[0].decode_head)


def _mmdet_targets(head, labels):
    """mmseg's conversion of label maps ``(B, H, W)`` into mmdet's per-class instance targets
    (the classes present, the ignore index in none), with their image metas."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    return head._seg_data_to_instance_data(
        [SegDataSample(gt_sem_seg=PixelData(data=torch.tensor(label[None])),
                       metainfo={"img_shape": label.shape}) for label in labels])


def test_combined_loss_gives_the_set_loss_a_key_and_refuses_none():
    from attnzoo import losses

    rng = np.random.default_rng(8)
    sets = {"classes": jnp.asarray(rng.standard_normal((1, 2, 4, 4)), jnp.float32),
            "masks": jnp.asarray(rng.standard_normal((1, 2, 4, 4, 4)), jnp.float32)}
    labels = jnp.asarray(rng.integers(0, 3, (1, 8, 8)))
    terms = [{"output": "sets", "loss": "mask_set", "num_points": 8}]
    loss = jax.jit(lambda key: losses.combined_loss({"sets": sets}, labels, terms, key=key)[0])
    one, other = loss(jax.random.key(0)), loss(jax.random.key(1))
    assert np.isfinite(one) and one != other  # the points come from the key
    with pytest.raises(ValueError, match="needs a key"):
        losses.combined_loss({"sets": sets}, labels, terms)


def test_set_loss_equals_mmdets_at_the_same_points(monkeypatch):
    """``losses.mask_set_loss`` against mmseg's Mask2Former head's ``loss_by_feat`` (mmdet's
    matching by scipy, its class, mask and Dice losses, summed over the layers) on random
    predictions of 3 layers, 2 images with ignored pixels, the random points of both given:
    the matching points (mmdet's ``torch.rand``) and the loss points (its uncertainty sampling)
    the same for every mask. Both in float32 (mmdet samples its integer masks in float32):
    1e-5 of the loss."""
    torch = pytest.importorskip("torch")
    from attnzoo import losses

    head = _mmseg_head("mask2former_r50_8xb2-90k_cityscapes-512x1024")
    import mmdet.models.dense_heads.mask2former_head as mmdet_head

    rng = np.random.default_rng(6)
    b, num_layers, q, k, num_points = 2, 3, 12, 19, 64
    head.num_queries, head.num_points = q, num_points
    classes = rng.standard_normal((b, num_layers, q, k + 1)) * 2
    masks = rng.standard_normal((b, num_layers, 9, 11, q)) * 3
    labels = rng.choice([0, 3, 5, 11, 255], size=(b, 35, 43))
    labels[1, labels[1] == 3] = 7
    match_points, loss_points = rng.uniform(size=(2, num_points, 2))
    monkeypatch.setattr(mmdet_head.torch, "rand", lambda *a, **kw: torch.tensor(match_points, dtype=torch.float32)[None])
    monkeypatch.setattr(mmdet_head, "get_uncertain_point_coords_with_randomness",
                        lambda preds, *a: torch.tensor(loss_points, dtype=torch.float32)[None]
                        .repeat(len(preds), 1, 1))
    gt, metas = _mmdet_targets(head, labels)
    with torch.no_grad():
        parts = head.loss_by_feat(
            torch.tensor(classes, dtype=torch.float32).transpose(0, 1),
            torch.tensor(masks, dtype=torch.float32).permute(1, 0, 4, 2, 3), gt, metas)
    ref = float(sum(parts.values()))
    ours = jax.jit(functools.partial(losses.mask_set_loss, num_points=num_points))(
        {"classes": jnp.asarray(classes, jnp.float32), "masks": jnp.asarray(masks, jnp.float32)},
        jnp.asarray(labels), key=jax.random.key(0),
        match_points=jnp.asarray(match_points, jnp.float32),
        loss_points=jnp.asarray(loss_points, jnp.float32))
    np.testing.assert_allclose(float(ours), ref, rtol=1e-5)


def test_maskformer_set_loss_equals_mmdets():
    """``losses.maskformer_set_loss`` against mmseg's MaskFormer head's ``loss_by_feat``
    (matching on whole masks against nearest-downsampled class masks, focal and Dice losses on
    the masks upsampled to the labels) on random predictions of 2 layers, 2 images with ignored
    pixels; both in float32 (mmdet's cost casts the integer masks to float32): 1e-5 of the
    loss."""
    torch = pytest.importorskip("torch")
    from attnzoo import losses

    head = _mmseg_head("maskformer_r50-d32_8xb2-160k_ade20k-512x512")

    rng = np.random.default_rng(7)
    b, num_layers, q, k = 2, 2, 10, 150
    head.num_queries = q
    classes = rng.standard_normal((b, num_layers, q, k + 1)) * 2
    masks = rng.standard_normal((b, num_layers, 9, 11, q)) * 3
    labels = rng.choice([0, 3, 17, 149, 255], size=(b, 35, 43))
    labels[1, labels[1] == 3] = 7
    gt, metas = _mmdet_targets(head, labels)
    with torch.no_grad():
        parts = head.loss_by_feat(
            torch.tensor(classes, dtype=torch.float32).transpose(0, 1),
            torch.tensor(masks, dtype=torch.float32).permute(1, 0, 4, 2, 3), gt, metas)
    ref = float(sum(parts.values()))
    ours = jax.jit(losses.maskformer_set_loss)(
        {"classes": jnp.asarray(classes, jnp.float32), "masks": jnp.asarray(masks, jnp.float32)},
        jnp.asarray(labels))
    np.testing.assert_allclose(float(ours), ref, rtol=1e-5)
