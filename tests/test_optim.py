"""Optimisers and learning-rate schedules of the recipes (``attnzoo.engine.optim``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_config

from attnzoo import engine
from attnzoo.engine import optim


def test_poly_schedule_with_warmup_matches_the_formula():
    cfg = engine.default_config().optimizer
    cfg.learning_rate, cfg.min_lr, cfg.power, cfg.warmup_steps = 0.01, 1e-4, 0.9, 10
    schedule = optim.learning_rate_schedule(cfg, 110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 0.005, rtol=1e-6)
    for t in (10, 40, 109):
        expected = (0.01 - 1e-4) * (1 - (t - 10) / 100) ** 0.9 + 1e-4
        np.testing.assert_allclose(float(schedule(t)), expected, rtol=1e-5)


def test_cosine_schedule_ends_at_min_lr():
    cfg = engine.default_config().optimizer
    cfg.schedule, cfg.learning_rate, cfg.min_lr = "cosine", 0.1, 0.001
    schedule = optim.learning_rate_schedule(cfg, 100)
    np.testing.assert_allclose(float(schedule(50)), 0.001 + (0.1 - 0.001) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(100)), 0.001, rtol=1e-5)


@pytest.mark.parametrize("num_updates,warmup,ratio,decay_start", [
    (250, 10, 0.4, 150),  # the peak held from 10 to 150, cosine over the last 100 updates
    (60, 50, 0.5, 50),  # the last 30 would overlap the warm-up: the decay takes the 10 after it
])
def test_decay_ratio_holds_the_peak_between_warmup_and_cosine_decay(num_updates, warmup, ratio,
                                                                    decay_start):
    cfg = engine.default_config().optimizer
    cfg.schedule, cfg.learning_rate, cfg.min_lr = "cosine", 0.1, 0.001
    cfg.warmup_steps, cfg.decay_ratio = warmup, ratio
    schedule = optim.learning_rate_schedule(cfg, num_updates)
    np.testing.assert_allclose(float(schedule(warmup // 2)), 0.1 * (warmup // 2) / warmup,
                               rtol=1e-6)
    for t in range(warmup, decay_start + 1, 7):
        np.testing.assert_allclose(float(schedule(t)), 0.1, rtol=1e-6)
    T = num_updates - decay_start
    for t in range(decay_start, num_updates, 3):
        expected = 0.001 + (0.1 - 0.001) * (1 + np.cos(np.pi * (t - decay_start) / T)) / 2
        np.testing.assert_allclose(float(schedule(t)), expected, rtol=1e-5)


@pytest.mark.parametrize("warmup,ratio,match", [(-1, 1.0, "optimizer.warmup_steps must be an integer >= 0"),
                                                (0, 0.0, r"optimizer.decay_ratio must be a number in \(0, 1\]"),
                                                (0, 1.5, r"optimizer.decay_ratio must be a number in")])
def test_schedule_phases_out_of_range_are_named(warmup, ratio, match):
    cfg = engine.default_config().optimizer
    cfg.warmup_steps, cfg.decay_ratio = warmup, ratio
    with pytest.raises(ValueError, match=match):
        optim.learning_rate_schedule(cfg, 100)


def test_sgd_step_decays_kernels_only_and_matches_pytorch_sgd():
    """Weight decay on conv / dense kernels only: not on biases, norms, position embeddings,
    class tokens or relative position bias tables (mmseg's Swin / ViT recipes)."""
    cfg = engine.default_config().optimizer  # sgd, momentum 0.9, wd 5e-4, poly
    cfg.schedule = "constant"
    params = {"conv": {"kernel": jnp.full((3, 3, 2, 2), 0.5), "bias": jnp.full((2,), 0.5)},
              "bn": {"scale": jnp.full((2,), 2.0)},
              "vit": {"pos_embed": jnp.full((1, 5, 2), 0.5), "cls_token": jnp.full((1, 1, 2), 0.5)},
              "attn": {"relative_position_bias_table": jnp.full((9, 2), 0.5)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    tx, _ = optim.make_optimizer(cfg, 10)
    opt_state = tx.init(params)
    for _ in range(2):  # PyTorch: buf = m buf + (g + wd p); p -= lr buf
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    p, buf = 0.5, 0.0
    for _ in range(2):
        buf = 0.9 * buf + (0.1 + 5e-4 * p)
        p -= 0.01 * buf
    np.testing.assert_allclose(np.asarray(params["conv"]["kernel"]), p, rtol=1e-6)
    no_decay = 0.5 - 0.01 * (0.1 + (0.9 * 0.1 + 0.1))
    np.testing.assert_allclose(np.asarray(params["conv"]["bias"]), no_decay, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(params["bn"]["scale"]), 2.0 - 0.01 * 0.29, rtol=1e-6)
    for embedding in (*params["vit"].values(), params["attn"]["relative_position_bias_table"]):
        np.testing.assert_allclose(np.asarray(embedding), no_decay, rtol=1e-6)


def test_gradient_accumulation_equals_the_mean_gradient():
    cfg = engine.default_config().optimizer
    cfg.name, cfg.schedule, cfg.weight_decay = "adamw", "constant", 0.0
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    g1 = {"w": jnp.linspace(-1, 1, 6).reshape(2, 3)}
    g2 = {"w": jnp.linspace(2, -0.5, 6).reshape(2, 3)}
    cfg.accumulate_steps = 2
    tx2, _ = optim.make_optimizer(cfg, 10)
    s = tx2.init(params)
    u, s = tx2.update(g1, s, params)
    assert not np.asarray(u["w"]).any()  # no update until the k-th call
    p2 = optax.apply_updates(params, u)
    u, s = tx2.update(g2, s, p2)
    p2 = optax.apply_updates(p2, u)
    cfg.accumulate_steps = 1
    tx1, _ = optim.make_optimizer(cfg, 5)
    u, _ = tx1.update(jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), tx1.init(params), params)
    np.testing.assert_allclose(np.asarray(p2["w"]), np.asarray(optax.apply_updates(params, u)["w"]),
                               rtol=1e-6)


def test_clip_norm_bounds_the_update():
    cfg = engine.default_config().optimizer
    cfg.schedule, cfg.momentum, cfg.weight_decay, cfg.clip_norm, cfg.learning_rate = \
        "constant", 0.0, 0.0, 1.0, 1.0
    tx, _ = optim.make_optimizer(cfg, 10)
    params = {"w": jnp.zeros((4, 4))}
    u, _ = tx.update({"w": jnp.full((4, 4), 3.0)}, tx.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(u)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("key,value,match", [
    ("optimizer.name", "lamb", "optimizer.name"),
    ("optimizer.schedule", "step", "optimizer.schedule"),
    ("optimizer.accumulate_steps", 0, "optimizer.accumulate_steps"),
])
def test_bad_optimizer_settings_name_the_field(key, value, match):
    cfg = tiny_config("/nonexistent", **{key: value})
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(cfg.optimizer, cfg.num_steps)
