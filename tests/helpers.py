"""Shared by the engine tests: a seconds-long config, JSONL and tree comparisons, config files."""

import json
from pathlib import Path

import jax
import numpy as np

from attnzoo import engine

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(data_dir, **overrides):
    """A narrow DANet on 64x64 crops of context_shapes: seconds per run on CPU."""
    c = engine.default_config()
    c.model.name = "danet_r18_d8"
    c.model.backbone_kwargs = {"width": 8, "stem_width": 8}
    c.model.head_channels = 16
    c.model.aux_channels = 8
    c.dataset.data_dir = str(data_dir)
    c.dataset.crop_size = (64, 64)
    c.dataset.ratio_range = (1.0, 1.0)
    c.dataset.eval_split = "validation[:16]"
    c.dataset.shuffle_buffer = 64
    c.num_steps = 4
    c.batch_size = 8
    c.eval_batch_size = 8
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.min_lr = 1e-5
    c.eval.crop_size = (64, 64)
    c.eval.stride = (32, 32)
    c.log_every = 1
    c.eval_every = 1000
    c.checkpoint_every = 2
    c.update_from_flattened_dict(overrides)
    return c


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_trees_equal(a, b, rtol=0.0, atol=0.0):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def final_params(workdir):
    _, variables, _ = engine.restore(workdir)
    return variables


def load_config(spec):
    """``configs/<spec>`` as ``train.py --config`` reads it."""
    return engine.config.load_config_file(str(ROOT / "configs" / spec))


def copy_with_damaged_step(workdir, dest, step=4, damage=lambda data: b"garbage"):
    """A copy of a run's workdir at ``dest`` whose checkpoint ``step`` has every file of its
    state replaced by ``damage(old bytes)`` (default: garbage; e.g. truncated)."""
    import shutil

    shutil.copytree(workdir, dest)
    for f in (dest / "checkpoints" / str(step) / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(damage(f.read_bytes()))
    return dest


def randomize_torch(model, seed=0):
    """A PyTorch reference model with weights ~ N(0, 1/fan_in), norm scales, biases and BN
    statistics random (not zeros or ones), every mmcv attention gamma 0.5 so that the attention
    matters (the parity tests against mmseg and transformers)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma.scale"):
                p.fill_(0.5)
            elif p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.rand(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model


def randomize_inputs(args, seed=0):
    """``args`` (a tree of arrays) with standard normal values of the same shapes, float32."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jax.numpy.asarray(rng.standard_normal(a.shape), np.float32),
                        args)


def build_block(name, size=(8, 8), **kwargs):
    """``(module, example args of size, variables)`` of block ``name`` built with ``kwargs``,
    inputs random and every parameter moved off its initial value (so that zero-initialised
    gammas and convolutions take part)."""
    from attnzoo import blocks

    module = blocks.create(name, **kwargs)
    args = randomize_inputs(blocks.get_spec(name).example(module, size))

    def init(key):  # jitted: one compilation instead of one per parameter shape
        variables = module.init(key, *args)
        leaves, tree = jax.tree.flatten(variables["params"])
        keys = jax.random.split(jax.random.key(1), len(leaves))
        params = jax.tree.unflatten(
            tree, [p + 0.1 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
        return {**variables, "params": params}

    return module, args, jax.jit(init)(jax.random.key(0))


def assert_same_training(want, got, scale=1.0):
    """Two runs of the same train steps agree: ``want`` and ``got`` are each ``(params,
    batch_stats, metrics)`` on the host (``want`` of 1 device, ``got`` of a mesh); ``scale``
    multiplies every tolerance below (a model whose own float32 rounding is larger)."""
    (p1, b1, m1), (pn, bn, mn) = want, got
    assert int(m1["loss"] > 0) and set(m1) >= {"loss", "grad_norm", "update_norm", "lr"}
    assert {"out/cross_entropy", "sets/mask_set", "sets/maskformer_set"} & set(m1)  # a loss
    # Tolerance: 1e-5 relative; the two gradient norms 5e-5. On n devices each parameter
    # gradient is a sum of n per-device partial sums (all-reduced or reduce-scattered), on 1
    # device one sum in another order; the norm, a further sum of squares over all entries, carries that float32
    # rounding (measured 2.5e-5 for fcn with 1x1 convolutions as dot_general).
    for k in m1:
        rtol = 5e-5 if k in ("grad_norm", "update_norm") else 1e-5
        np.testing.assert_allclose(mn[k], m1[k], rtol=scale * rtol, err_msg=k)
    # Parameters to 1e-5 of each one's largest entry (at least 1e-7): the rounding of a
    # gradient that BatchNorm makes cancel is that of its terms, not of the small sum. TransUNet's
    # decoder (a conv before BN at stride 2 over 8 x 32 x 32 positions) measured 2.2e-7 on an
    # entry of 7.5e-5 of a kernel whose largest is 0.095 (its updates 2.2e-5 at most).
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pn), jax.tree.leaves(p1)):
        np.testing.assert_allclose(x, y, rtol=scale * 1e-5,
                                   atol=scale * max(1e-7, 1e-5 * np.abs(y).max()),
                                   err_msg=jax.tree_util.keystr(path))
    # BatchNorm statistics to 1e-5 of each one's largest entry: a running mean near zero
    # carries the reduction's rounding in full (ASPP's image-pool BN averages 8 pooled 1x1 maps:
    # 5e-7 absolute on entries of 2e-5, with 0.08 the largest; measured)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(bn), jax.tree.leaves(b1)):
        np.testing.assert_allclose(x, y, rtol=scale * 1e-5, atol=scale * 1e-5 * np.abs(y).max(),
                                   err_msg=jax.tree_util.keystr(path))
