"""The jitted, sharded train step (``attnzoo.engine.steps``) on 1 and 8 devices and in bfloat16."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_trees_equal, tiny_config
import pytest

from attnzoo import engine, sharding
from attnzoo.engine import optim


@pytest.mark.slow
def test_train_step_is_the_same_on_1_and_8_devices():
    assert len(jax.devices()) == 8
    config = tiny_config("/unused", **{"optimizer.name": "sgd", "model.name": "fcn_r18_d8"})
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
        assert st.params["head"]["cls"]["conv_seg"]["kernel"].sharding.is_fully_replicated
        results.append(jax.device_get((st.params, st.batch_stats, metrics)))
    (p1, b1, m1), (p8, b8, m8) = results
    assert int(m1["loss"] > 0) and set(m1) >= {"loss", "grad_norm", "update_norm", "lr",
                                          "out/cross_entropy", "aux/cross_entropy"}
    # Tolerance: 1e-5 relative; the two gradient norms 5e-5. On 8 devices each parameter
    # gradient is a sum of 8 per-device partial sums (all-reduced), on 1 device one sum in
    # another order; the norm, a further sum of squares over 0.8M entries, carries that float32
    # rounding (measured 2.5e-5 with 1x1 convolutions as dot_general).
    for k in m1:
        rtol = 5e-5 if k in ("grad_norm", "update_norm") else 1e-5
        np.testing.assert_allclose(m8[k], m1[k], rtol=rtol, err_msg=k)
    assert_trees_equal(p8, p1, rtol=1e-5, atol=1e-7)
    assert_trees_equal(b8, b1, rtol=1e-5, atol=1e-7)


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
