"""Blocks: bad configurations, gamma-zero identities, batch statistics, and equation-level
references for the blocks without a PyTorch counterpart (the checks every registered block
passes, jit / bfloat16 / odd sizes / bad input, are in test_registries.py)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnzoo
from attnzoo import blocks
from helpers import build_block, randomize_inputs

CHANNELS = 32


def build(name, **kwargs):
    return build_block(name, channels=CHANNELS, **kwargs)


def test_registry_creates_by_name_and_refuses_unknown_names():
    assert attnzoo.blocks.list_blocks() == sorted(attnzoo.blocks.list_blocks())
    with pytest.raises(ValueError, match="name must be one of"):
        blocks.create("senet", channels=8)
    assert blocks.create("se", channels=8, name="attn").name == "attn"


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("se", {"channels": 0}, "channels must be a positive integer"),
        ("pam", {"channels": 4}, "leaves no query/key channels"),
        ("cca", {"channels": 16, "recurrence": 0}, "recurrence"),
        ("mhsa", {"channels": 10, "num_heads": 3}, "channels=10 must be divisible by num_heads=3"),
        ("window", {"channels": 8, "window_size": 4, "shift_size": 4}, "shift_size"),
        ("sk", {"channels": 9}, "channels=9 must be divisible by number of paths=2"),
        ("splat", {"channels": 6, "groups": 2, "radix": 2}, "groups \\* radix"),
        ("eca", {"channels": 8, "kernel_size": 4}, "kernel_size must be odd"),
        ("non_local", {"channels": 8, "mode": "cosine"}, "mode must be one of"),
        ("scse", {"channels": 8, "reduction": 16}, "leaves no channels"),
        ("gc", {"channels": 8, "fuse_add": False, "fuse_scale": False}, "do nothing"),
        ("polarized", {"channels": 1}, "inter_channels"),
        ("polarized", {"channels": 8, "mode": "serial"}, "mode must be one of"),
        ("multiscale", {"channels": 8, "num_scales": 1}, "num_scales"),
        ("hard", {"channels": 16, "top_k": -1}, "top_k"),
    ],
)
def test_bad_configuration_is_refused(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        blocks.create(name, **kwargs)


@pytest.mark.parametrize("name", ["pam", "cam", "cca", "hard", "temporal", "non_local"])
def test_gamma_zero_blocks_start_as_identity(name):
    module = blocks.create(name, channels=CHANNELS)
    args = randomize_inputs(blocks.get_spec(name).example(module))
    variables = module.init(jax.random.key(0), *args)
    np.testing.assert_allclose(module.apply(variables, *args), args[0], atol=1e-6)


def test_batch_stats_update_in_train_mode():
    module, args, variables = build("cbam")
    _, updates = module.apply(variables, *args, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["spatial"]["conv"]["bn"]["mean"]
    after = updates["batch_stats"]["spatial"]["conv"]["bn"]["mean"]
    assert not np.allclose(before, after)


# -- equation-level references ------------------------------------------------------------------


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def conv1x1(x, p):
    out = x @ np.asarray(p["kernel"])[0, 0]
    return out + np.asarray(p["bias"]) if "bias" in p else out


def test_attention_gate_equation():
    module, (x, g), variables = build("attention_gate", subsample=1, output_transform=False)
    p = variables["params"]
    theta = conv1x1(np.asarray(x), p["theta"])
    phi = np.asarray(jax.image.resize(conv1x1(np.asarray(g), p["phi"]), theta.shape[:3] + (16,),
                                      "bilinear"))
    alpha = 1 / (1 + np.exp(-conv1x1(np.maximum(theta + phi, 0), p["psi"])))
    out, state = module.apply(variables, x, g, mutable=["intermediates"])
    np.testing.assert_allclose(out, alpha * np.asarray(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state["intermediates"]["alpha"][0], alpha, rtol=1e-5, atol=1e-6)


def adaptive_pool_loop(x, s):
    """PyTorch's adaptive average pooling of NHWC ``x`` into ``s x s`` bins, by loops."""
    n, (h, w) = x.shape[0], x.shape[1:3]
    out = np.empty((n, s, s, x.shape[-1]))
    for i in range(s):
        for j in range(s):
            rows = slice(i * h // s, -(-(i + 1) * h // s))
            cols = slice(j * w // s, -(-(j + 1) * w // s))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("config", ["isanet", "ann_fusion", "ann_context"])
def test_self_attention_block_equation(config):
    """mmseg's SelfAttentionBlock in numpy, as ISANet uses it (two 1x1 conv-BN-ReLU for the
    queries and for the keys, a 1x1 conv for the values, softmax(q k^T / sqrt(d)) v, a 1x1
    conv-BN-ReLU) and as ANN does (one conv-BN-ReLU each, keys and values of a second, wider
    input pooled into 1 + 9 + 36 bins, values to d and a 1x1 conv back; or the same module for
    queries and keys); BatchNorm at inference, with random running statistics."""
    d, context_channels = 8, {"ann_fusion": 48}.get(config)
    kwargs = {"isanet": dict(output_conv=True),
              "ann_fusion": dict(key_query_convs=1, out_project=True, key_pool_scales=(1, 3, 6),
                                 context_channels=context_channels),
              "ann_context": dict(key_query_convs=1, out_project=True, key_pool_scales=(1, 3, 6),
                                  share_key_query=True)}[config]
    module = blocks.create("self_attention", channels=CHANNELS, inter_channels=d, **kwargs)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 11, CHANNELS)).astype(np.float32)
    args = (x,) if context_channels is None else (
        x, rng.standard_normal((2, 13, 7, context_channels)).astype(np.float32))
    variables = jax.jit(module.init)(jax.random.key(0), *args)
    variables = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(np.float32), variables)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
    p, st = variables["params"], variables["batch_stats"]

    def cbr(t, name):
        y = conv1x1(t, p[name]["conv"])
        bn, s_ = p[name]["bn"], st[name]["bn"]
        y = (y - s_["mean"]) / np.sqrt(s_["var"] + 1e-5) * bn["scale"] + bn["bias"]
        return np.maximum(y, 0)

    x64 = np.asarray(x, np.float64)
    c64 = np.asarray(args[-1], np.float64)
    if config == "isanet":
        q = cbr(cbr(x64, "query_project_0"), "query_project_1").reshape(2, -1, d)
        k = cbr(cbr(c64, "key_project_0"), "key_project_1").reshape(2, -1, d)
        v = conv1x1(c64, p["value_project"]).reshape(2, -1, CHANNELS)
    else:
        def pool(t):
            return np.concatenate([adaptive_pool_loop(t, s).reshape(2, s * s, -1)
                                   for s in (1, 3, 6)], axis=1)

        q = cbr(x64, "key_project" if config == "ann_context" else "query_project")
        q = q.reshape(2, -1, d)
        k, v = pool(cbr(c64, "key_project")), pool(conv1x1(c64, p["value_project"]))
        assert k.shape[1] == 46
    y = (softmax(q @ k.transpose(0, 2, 1) / np.sqrt(d)) @ v).reshape(x.shape[:3] + (-1,))
    want = cbr(y, "output_conv") if config == "isanet" else conv1x1(y, p["out_project"])
    np.testing.assert_allclose(module.apply(variables, *args), want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())


def test_self_attention_block_shared_projection_is_one_module():
    module = blocks.create("self_attention", channels=8, key_query_convs=1, share_key_query=True)
    params = module.init(jax.random.key(0), jnp.ones((1, 4, 4, 8)))["params"]
    assert "key_project" in params and "query_project" not in params
    with pytest.raises(ValueError, match="share_key_query needs context_channels"):
        blocks.create("self_attention", channels=8, share_key_query=True, context_channels=4)


def test_separable_conv_is_a_depthwise_then_a_pointwise_conv_norm_act():
    """mmcv's DepthwiseSeparableConvModule: a dilated depthwise 3x3 conv-BN-ReLU (one filter per
    channel, no bias), then a 1x1 conv-BN-ReLU; BatchNorm at inference."""
    from attnzoo.blocks.common import ConvNormAct, SeparableConvNormAct

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 9, 10, 6)).astype(np.float32)
    module = SeparableConvNormAct(4, dilation=2)
    variables = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32),
                             module.init(jax.random.key(0), x))
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
    p, st = variables["params"], variables["batch_stats"]

    def bn_relu(t, name):
        bn, s_ = p[name]["bn"], st[name]["bn"]
        return np.maximum((t - s_["mean"]) / np.sqrt(s_["var"] + 1e-5) * bn["scale"] + bn["bias"],
                          0)

    kernel = np.asarray(p["depthwise_conv"]["conv"]["kernel"], np.float64)
    assert kernel.shape == (3, 3, 1, 6) and "bias" not in p["depthwise_conv"]["conv"]
    padded = np.pad(x.astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)))
    depthwise = sum(padded[:, 2 * i:2 * i + 9, 2 * j:2 * j + 10] * kernel[i, j, 0]
                    for i in range(3) for j in range(3))
    want = bn_relu(conv1x1(bn_relu(depthwise, "depthwise_conv"), p["pointwise_conv"]["conv"]),
                   "pointwise_conv")
    np.testing.assert_allclose(module.apply(variables, x), want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match=r"features \(4\) must equal the input channels \(6\)"):
        ConvNormAct(4, 3, depthwise=True).init(jax.random.key(0), x)


def test_attention_gate_subsampled_grid():
    module, (x, g), variables = build("attention_gate", subsample=2)
    out, state = module.apply(variables, x, g, mutable=["intermediates"])
    assert out.shape == x.shape and state["intermediates"]["alpha"][0].shape == x.shape[:3] + (1,)


@pytest.mark.parametrize("relative", [False, True])
def test_mhsa_equation(relative):
    kwargs = {"num_heads": 4, "relative_position": (8, 8) if relative else None}
    module, (x,), variables = build("mhsa", **kwargs)
    p = variables["params"]
    xs = np.asarray(x, np.float64).reshape(1, 64, CHANNELS)
    qkv = conv1x1(xs, p["qkv"]).reshape(64, 3, 4, 8)
    heads = []
    for h in range(4):
        s = qkv[:, 0, h] @ qkv[:, 1, h].T / np.sqrt(8)
        if relative:
            table = np.asarray(p["relative_position_bias_table"])[:, h]
            s = s + table[attnzoo.ops.relative_position_index(8)]
        heads.append(softmax(s) @ qkv[:, 2, h])
    want = conv1x1(np.concatenate(heads, -1), p["proj"]).reshape(1, 8, 8, CHANNELS)
    np.testing.assert_allclose(module.apply(variables, x), want, rtol=1e-4, atol=1e-5)
    if not relative:
        efficient = blocks.create("mhsa", channels=CHANNELS, num_heads=4, memory_efficient=True,
                                  query_chunk_size=16, key_chunk_size=16)
        np.testing.assert_allclose(efficient.apply(variables, x), want, rtol=1e-4, atol=1e-5)


def test_window_attention_unshifted_is_per_window_mhsa():
    module, _, variables = build("window", num_heads=2, window_size=4)
    x = randomize_inputs((jnp.zeros((1, 8, 8, CHANNELS)),), seed=3)[0]
    p = variables["params"]
    out = np.asarray(module.apply(variables, x))
    table = np.asarray(p["relative_position_bias_table"])
    idx = attnzoo.ops.relative_position_index(4)
    for wy in range(2):
        for wx in range(2):
            win = np.asarray(x)[0, 4 * wy:4 * wy + 4, 4 * wx:4 * wx + 4].reshape(16, CHANNELS)
            qkv = (win @ np.asarray(p["qkv"]["kernel"]) + np.asarray(p["qkv"]["bias"]))
            qkv = qkv.reshape(16, 3, 2, 16)
            heads = [softmax(qkv[:, 0, h] @ qkv[:, 1, h].T / 4.0 + table[idx][..., h]) @ qkv[:, 2, h]
                     for h in range(2)]
            want = np.concatenate(heads, -1) @ np.asarray(p["proj"]["kernel"]) + np.asarray(
                p["proj"]["bias"])
            got = out[0, 4 * wy:4 * wy + 4, 4 * wx:4 * wx + 4].reshape(16, CHANNELS)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_shifted_window_attention_is_local_and_pads():
    module, _, variables = build("window", num_heads=2, window_size=4, shift_size=2)
    x = randomize_inputs((jnp.zeros((1, 10, 9, CHANNELS)),), seed=4)[0]
    apply = jax.jit(module.apply)  # the shifted mask is built at trace time
    out = apply(variables, x)
    assert out.shape == x.shape
    # A change at one pixel reaches only pixels of its (shifted) window: never far away.
    x2 = x.at[0, 0, 0].add(1.0)
    changed = np.abs(np.asarray(apply(variables, x2) - out)).max(-1)[0] > 0
    assert changed[0, 0] and not changed[6:, :].any() and not changed[:, 6:].any()


def test_temporal_attention_mixes_frames_only_at_the_same_pixel():
    module, (x,), variables = build("temporal", num_heads=2, causal=True)
    out = module.apply(variables, x)
    x2 = x.at[0, 1, 2, 3].add(1.0)
    diff = np.abs(np.asarray(module.apply(variables, x2) - out)).max(-1)[0]  # (T, H, W)
    assert diff[1, 2, 3] > 0 and diff[2, 2, 3] > 0  # same pixel, later frame
    assert diff[0].max() == 0  # causal: earlier frame untouched
    diff[:, 2, 3] = 0
    assert diff.max() == 0  # other pixels untouched


def test_multiscale_weights_are_a_convex_combination():
    module, (inputs,), variables = build("multiscale", num_scales=3)
    out, state = module.apply(variables, inputs, mutable=["intermediates"])
    w = np.asarray(state["intermediates"]["scale_weights"][0])
    assert w.shape == out.shape[:3] + (3,)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    same = [inputs[0]] * 3
    np.testing.assert_allclose(module.apply(variables, same), inputs[0], rtol=1e-5, atol=1e-6)


def test_hard_attention_keeps_top_k_only():
    module, (x,), variables = build("hard", top_k=4, memory_efficient=True, query_chunk_size=10)
    dense = blocks.create("hard", channels=CHANNELS, top_k=4)
    np.testing.assert_allclose(module.apply(variables, x), dense.apply(variables, x), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="top_k=65 exceeds"):
        blocks.create("hard", channels=CHANNELS, top_k=65).init(jax.random.key(0), x)


def test_variables_are_plain_pytrees():
    module, args, variables = build("pam")
    flat = flax.traverse_util.flatten_dict(variables["params"])
    assert set(flat) == {("query_conv", "kernel"), ("query_conv", "bias"), ("key_conv", "kernel"),
                         ("key_conv", "bias"), ("value_conv", "kernel"), ("value_conv", "bias"),
                         ("gamma",)}


def test_sharded_batch_gives_global_batch_norm_statistics():
    """Batch over 8 devices (jit + NamedSharding): same output and BN statistics as 1 device."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    module = blocks.create("sk", channels=CHANNELS)
    x = randomize_inputs((jnp.zeros((16, 8, 8, CHANNELS)),), seed=5)[0]
    variables = module.init(jax.random.key(0), x)

    def train_apply(variables, x):
        return module.apply(variables, x, train=True, mutable=["batch_stats"])

    want_out, want_stats = jax.jit(train_apply)(variables, x)
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    replicated = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    got_out, got_stats = jax.jit(train_apply)(replicated, xs)
    assert got_out.sharding.spec[0] == "data"
    np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["add", "max"])
def test_scse_equation(aggregation):
    module, (x,), variables = build("scse", reduction=4, aggregation=aggregation)
    p = variables["params"]
    xs = np.asarray(x, np.float64)
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    z = xs.mean(axis=(1, 2), keepdims=True)
    cse = xs * sig(conv1x1(np.maximum(conv1x1(z, p["cse"]["fc1"]), 0), p["cse"]["fc2"]))
    sse = xs * sig(conv1x1(xs, p["sse"]))
    want = cse + sse if aggregation == "add" else np.maximum(cse, sse)
    np.testing.assert_allclose(module.apply(variables, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["products", "xla"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_pointwise_conv_equals_flax_1x1_conv(use_bias, implementation):
    """Same parameter tree, same initial values, same outputs and gradients as ``nn.Conv``,
    under either convolution implementation."""
    import flax.linen as nn

    from attnzoo.blocks.common import PointwiseConv, conv

    assert isinstance(conv(8, 1, use_bias=use_bias), PointwiseConv)
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 6))
    ours = PointwiseConv(8, use_bias=use_bias)
    ref = nn.Conv(8, (1, 1), use_bias=use_bias)
    v = ours.init(jax.random.key(1), x)
    v_ref = ref.init(jax.random.key(1), x)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), v, v_ref)
    if use_bias:
        v = {"params": {**v["params"], "bias": jax.random.normal(jax.random.key(2), (8,))}}
    np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-6)
    with attnzoo.ops.conv_implementation(implementation):
        g = jax.grad(lambda p, a: (ours.apply(p, a) ** 2).sum(), argnums=(0, 1))(v, x)
    g_ref = jax.grad(lambda p, a: (ref.apply(p, a) ** 2).sum(), argnums=(0, 1))(v, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g, g_ref)
    half = PointwiseConv(8, use_bias=use_bias, dtype=jnp.bfloat16).apply(v, x)
    assert half.dtype == jnp.bfloat16
