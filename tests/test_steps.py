"""The jitted, sharded train step (``attnzoo.engine.steps``) on 1 and 8 devices and in bfloat16."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_same_training, tiny_config
import pytest

from attnzoo import engine, heads, sharding
from attnzoo.engine import optim


# models of other backbones (or decoders) than the quickstart's, narrow, as config.model fields:
# an HRNet of branches 8 to 64 wide, a Swin 32 wide with 2 blocks per stage (window 7: every
# shifted window of a 64 x 64 image is padded and masked), ViTs of 4 layers 32 wide (UPerNet's
# MultiLevelNeck; SETR-MLA's neck, head and four auxiliary heads), an SVT 16 to 64 wide
VIT = {"embed_dim": 32, "depth": 4, "num_heads": 2, "out_indices": (0, 1, 2, 3),
       "img_size": (64, 64)}
OTHER_BACKBONES = {
    "ocrnet_hr18s": {"backbone_kwargs": {"widths": (8, 16, 32, 64)}},
    "upernet_swin_t": {"backbone_kwargs": {"embed_dim": 32, "depths": (2, 2, 2, 2),
                                           "num_heads": (1, 2, 4, 8)}},
    "upernet_deit_s16_mln": {"backbone_kwargs": VIT},
    "setr_vit_l_mla": {"backbone_kwargs": VIT, "head_channels": None,
                       "head_kwargs": {"channels": 32, "mla_channels": 8}, "aux_channels": 16},
    "fpn_svt_s": {"backbone_kwargs": {"embed_dims": (16, 32, 48, 64), "num_heads": (1, 2, 3, 4),
                                      "depths": (2, 2, 2, 2)}},
    "mask2former_swin_t": {"backbone_kwargs": {"embed_dim": 32, "depths": (2, 2, 2, 2),
                                               "num_heads": (1, 2, 4, 8)}},
    "maskformer_swin_t": {"backbone_kwargs": {"embed_dim": 32, "depths": (2, 2, 2, 2),
                                              "num_heads": (1, 2, 4, 8)}}}
# Mask2Former thresholds its masks (the next layer's attention mask) and both query heads match
# their queries to the targets: on the quickstart's ResNet, BatchNorm's statistics of the batch,
# summed over 8 devices in another order than on 1, move mask logits by ~1e-6, which flips a
# few attention-mask positions near 0 (Mask2Former's outputs then differ by 1e-4, measured:
# 6.6e-5 absolute before the first masked layer, 1.2e-3 after) or a near-tie of the matching
# (both: the gradient norm 10% apart). They are compared on the tiny Swin (LayerNorm only: each
# image computed alone), where no decision flips.
DISCRETE = ("mask2former", "maskformer")
# Families whose own float32 rounding exceeds assert_same_training's tolerances, and the factor
# on them: twice the largest excess measured on 1 device alone when the input images are scaled
# by 1 + 1e-7 N(0, 1) (five draws). EncNet: its semantic encoding loss is backpropagated through
# BatchNorm1d over codes whose variance at initialisation is ~1e-5, near eps (gradients ~200x);
# such a perturbation moves its update norm after two steps by up to 1.2e-4 and its BatchNorm
# biases (zero at init) by up to 1.7x the parameter tolerance (measured here; without the SE loss
# or that BatchNorm, the norms by < 1e-6). 8 devices measured 9.8e-5 and 1.5x.
ROUNDING_SCALE = {"encnet": 5.0}


def family_config(family, model=None):
    """The quickstart's small model of ``family`` (``configs/quickstart.py``) on tiny_config's
    64 x 64 crops, trained with SGD; ``model``: one of :data:`OTHER_BACKBONES` instead."""
    from configs import quickstart

    config = tiny_config("/unused", **{"optimizer.name": "sgd"})
    config.model = quickstart.get_config(family).model
    if model is not None:
        config.model.name = model
        config.model.backbone_kwargs = {}
        config.model.update(OTHER_BACKBONES[model])
    return config


# exhaustive (25-80 s each here): heads of plain convolutions and attention on the ResNet that
# the slow set's FCN, DANet, PSANet and the others already run this way, and models whose
# backbone another slow case covers (Swin, plain SETR's ViT)
EXHAUSTIVE = {"ann", "ccnet", "dnl", "emanet", "gcnet", "isanet", "nonlocal", "pspnet",
              "polarized", "deeplabv3", "setr", "upernet_swin_t", "maskformer_swin_t"}


@pytest.mark.parametrize("family,model", [
    pytest.param(family, model, marks=pytest.mark.exhaustive if (model or family) in EXHAUSTIVE
                 else pytest.mark.slow)
    for family, model in [(f, None) for f in heads.list_families() if f not in DISCRETE]
    + [(name.split("_")[0], name) for name in OTHER_BACKBONES]])
def test_train_step_is_the_same_on_1_and_8_devices(family, model):
    """Two SGD steps of each family's small model (dropout and stochastic depth on): 8 devices
    (the batch sharded, gradients all-reduced, BatchNorm statistics of the global batch) give
    the parameters of 1 device. SGD, not AdamW: Adam divides by the gradient's own scale, so
    the rounding of near-zero gradients becomes a visible update."""
    assert len(jax.devices()) == 8
    config = family_config(family, model)
    model = engine.build_model(config)
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_steps)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 64, 64, 3)).astype(np.float32),
             "label": rng.integers(0, 5, size=(8, 64, 64)).astype(np.int32)}
    batch["label"][:, :4] = 255
    results = []
    initial = jax.device_get(engine.init_state(model, tx, config, sharding.make_mesh()))
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices)
        st = jax.device_put(initial, sharding.replicated(mesh))
        step = engine.make_train_step(model, tx, schedule, config, mesh)
        for _ in range(2):
            st, metrics = step(st, batch)
        assert all(p.sharding.is_fully_replicated for p in jax.tree.leaves(st.params["head"]))
        results.append(jax.device_get((st.params, st.batch_stats, metrics)))
    assert_same_training(*results, scale=ROUNDING_SCALE.get(family, 1.0))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
    config = tiny_config("/unused", compute_dtype="bfloat16", **{"model.name": "fcn_r18_d8"})
    model = engine.build_model(config)
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_steps)
    mesh = sharding.make_mesh()
    st = engine.init_state(model, tx, config, mesh)
    rng = np.random.default_rng(1)
    batch = {"image": rng.normal(size=(8, 64, 64, 3)).astype(np.float32),
             "label": rng.integers(0, 5, size=(8, 64, 64)).astype(np.int32)}
    st, metrics = engine.make_train_step(model, tx, schedule, config, mesh)(st, batch)
    assert {leaf.dtype for leaf in jax.tree.leaves(st.params)} == {jnp.dtype("float32")}
    assert math.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_eval_step_scores_labels_at_their_original_size():
    """With ``label_size`` in the batch the eval step resizes the model's logits (not
    probabilities) from each image's ``size`` to its label, as mmseg's ``postprocess_result``:
    the confusion matrix equals one built from PyTorch's resize of the same logits
    (>= 99.9% of the pixels; float32 vs float64 near-ties)."""
    torch = pytest.importorskip("torch")
    config = tiny_config("/unused", **{"model.name": "fcn_r18_d8", "dataset.crop_size": (32, 32)})
    model = engine.build_model(config)
    k = config.dataset.num_classes
    mesh = sharding.make_mesh(jax.devices()[:1])
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(2)
    batch = {"image": rng.standard_normal((2, 32, 32, 3)).astype(np.float32),
             "label": np.full((2, 40, 48), 255, np.int32),
             "size": np.array([[32, 24], [20, 32]], np.int32),
             "label_size": np.array([[40, 30], [25, 48]], np.int32)}
    for b, (ho, wo) in enumerate(batch["label_size"]):
        batch["label"][b, :ho, :wo] = rng.integers(0, k, (ho, wo))
    cm = np.asarray(engine.make_eval_step(model, config, mesh)(variables, batch))
    logits = np.asarray(model.apply(variables, batch["image"])["out"])
    want = np.zeros((k, k), np.int64)
    for b, ((h, w), (ho, wo)) in enumerate(zip(batch["size"], batch["label_size"])):
        crop = torch.tensor(logits[b, :h, :w]).permute(2, 0, 1)[None].double()
        pred = torch.nn.functional.interpolate(crop, size=(int(ho), int(wo)), mode="bilinear",
                                               align_corners=False)[0].argmax(0).numpy()
        np.add.at(want, (batch["label"][b, :ho, :wo].ravel(), pred.ravel()), 1)
    assert cm.sum() == want.sum() == 40 * 30 + 25 * 48
    assert np.trace(np.minimum(cm, want)) >= np.trace(want) - 0.001 * want.sum()
    assert np.abs(cm - want).sum() <= 2 * 0.001 * want.sum()
