"""ops.conv2d (gradients as matrix products), ops.pointwise, ops.depthwise_conv2d and
blocks.common.Conv / PointwiseConv against XLA's convolution, a plain product and their own
differentiation, computed in float64; the conv_implementation setting, and whole models'
logits and gradients under each of its values."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import models, ops
from attnzoo.ops import conv as conv_module
from attnzoo.blocks.common import Conv, PointwiseConv, conv

# float32 sums of at most a few thousand products against float64: relative to the largest entry
RTOL = 1e-5

# (kernel, stride, dilation, padding): every form the models use, and one whose flipped
# convolution would need negative padding (it takes XLA's transpose for dx)
CASES = {
    "3x3 (ResNet, heads, Attention U-Net)": (3, 1, 1, 1),
    "3x3 dilation 2 (layer3 at output stride 8)": (3, 1, 2, 2),
    "3x3 dilation 4 (layer4 at output stride 8)": (3, 1, 4, 4),
    "3x3 dilation 12 (ASPP, wider than the map)": (3, 1, 12, 12),
    "3x3 stride 2 (deep stem, layer2 / MiT downsampling)": (3, 2, 1, 1),
    "7x7 stride 2 (ResNet stem)": (7, 2, 1, 3),
    "1x1 stride 2 (ResNet shortcut)": (1, 2, 1, 0),
    "7x7 stride 4 (MiT patch embedding)": (7, 4, 1, 3),
    "3x3 unpadded": (3, 1, 1, 0),
    "3x3 padding 3 > d (k - 1)": (3, 1, 1, 3),
}


def reference(x, kernel, cotangent, stride, dilation, padding):
    """Output and both gradients of ``lax.conv_general_dilated`` in float64."""
    with jax.enable_x64(True):
        x, kernel, cotangent = (jnp.asarray(a, jnp.float64) for a in (x, kernel, cotangent))
        fn = lambda a, b: jax.lax.conv_general_dilated(  # noqa: E731
            a, b, (stride, stride), [(padding, padding)] * 2, rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y, vjp = jax.vjp(fn, x, kernel)
        return [np.asarray(a) for a in (y, *vjp(cotangent))]


def assert_close(ours, want):
    np.testing.assert_allclose(ours, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


# XLA's own path (the reference's own differentiation) runs in the slow set
@pytest.mark.parametrize("implementation",
                         ["products", pytest.param("xla", marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d_equals_xla_convolution_in_value_and_gradients(case, implementation):
    k, stride, dilation, padding = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 13, 11, 5)).astype(np.float32)
    kernel = rng.standard_normal((k, k, 5, 6)).astype(np.float32)
    fn = lambda a, b: ops.conv2d(a, b, stride=stride, dilation=dilation,  # noqa: E731
                                 padding=padding, implementation=implementation)
    y, vjp = jax.vjp(jax.jit(fn), jnp.asarray(x), jnp.asarray(kernel))
    cotangent = rng.standard_normal(y.shape).astype(np.float32)
    y_want, dx_want, dk_want = reference(x, kernel, cotangent, stride, dilation, padding)
    dx, dk = vjp(jnp.asarray(cotangent))
    assert y.dtype == dx.dtype == dk.dtype == jnp.float32
    for ours, want in [(y, y_want), (dx, dx_want), (dk, dk_want)]:
        assert_close(np.asarray(ours), want)


def count_convolutions(fn, *args):
    return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


@pytest.mark.parametrize("stride, convolutions", [(1, 2), (2, 3)])
def test_products_replace_xlas_kernel_gradient(stride, convolutions):
    """With ``"products"`` the gradient holds the forward convolution and one for dx (at stride
    1 the flipped kernel's, otherwise XLA's transpose), none for dK; XLA's own holds three."""
    x, kernel = jnp.ones((1, 9, 9, 4)), jnp.ones((3, 3, 4, 4))

    def grads(implementation):
        loss = lambda a, b: ops.conv2d(a, b, stride=stride, padding=1,  # noqa: E731
                                       implementation=implementation).sum()
        return jax.grad(loss, argnums=(0, 1))

    assert count_convolutions(grads("products"), x, kernel) == convolutions
    assert count_convolutions(grads("xla"), x, kernel) == 3


# the emulated CPU without BF16 instructions, and the 7x7 kernels (6-7 s each), in the slow set
@pytest.mark.parametrize("native", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["bf16 CPU", "AVX2 CPU"])
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.startswith("7x7")
                                  else c for c in CASES])
def test_conv2d_bfloat16_sums_every_product_in_float32(case, native, monkeypatch):
    """Under bfloat16 on a CPU that multiplies bfloat16 natively the products path computes the
    value (and dx at stride 1) as one float32 channel product per tap, with no convolution;
    elsewhere the value is XLA's convolution. Value, dx and dK within one bfloat16 rounding of
    the float64 result for the same bfloat16 inputs either way."""
    monkeypatch.setattr(conv_module, "cpu_has_bfloat16_products", lambda: native)
    k, stride, dilation, padding = CASES[case]
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 16, 14, 32)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((k, k, 32, 8)) * 0.1, jnp.bfloat16)
    fn = lambda a, b: ops.conv2d(a, b, stride=stride, dilation=dilation,  # noqa: E731
                                 padding=padding, implementation="products")
    y, vjp = jax.vjp(fn, x, kernel)
    cotangent = jnp.asarray(rng.standard_normal(y.shape), jnp.bfloat16)
    dx, dk = vjp(cotangent)
    assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16
    assert count_convolutions(fn, x, kernel) == (0 if native else 1)
    wants = reference(*(np.asarray(a, np.float32) for a in (x, kernel, cotangent)), stride,
                      dilation, padding)
    # bfloat16 inputs (exact products in float32), float32 sums of at most a few thousand
    # terms, one bfloat16 rounding: 2^-8 relative to the largest entry
    for ours, want in zip((y, dx, dk), wants):
        np.testing.assert_allclose(np.asarray(ours, np.float32), want, rtol=2**-8,
                                   atol=2**-8 * np.abs(want).max())


def test_bfloat16_products_follow_the_cpus_flags(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    reads = []

    def fake_open(path, *args, **kwargs):
        reads.append(path)
        return open(cpuinfo, *args, **kwargs)

    monkeypatch.setattr(conv_module, "open", fake_open, raising=False)
    for flags, native in [("fpu avx2 fma", False), ("fpu avx512f avx512_bf16", True),
                          ("fpu amx_tile amx_bf16", True)]:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        conv_module.cpu_has_bfloat16_products.cache_clear()
        assert conv_module.cpu_has_bfloat16_products() is native
    cpuinfo.unlink()
    conv_module.cpu_has_bfloat16_products.cache_clear()
    assert conv_module.cpu_has_bfloat16_products() is False
    assert reads == ["/proc/cpuinfo"] * 4
    conv_module.cpu_has_bfloat16_products.cache_clear()


def test_the_implementation_follows_the_argument_then_the_setting_in_force():
    assert ops.conv.current_implementation() == "auto"
    assert ops.resolve_implementation() == "products"  # the tests run on CPU
    assert ops.resolve_implementation(None, 32 * 64) == "xla"  # narrower than 64 x 64 pairs
    assert ops.resolve_implementation("products", 3 * 8) == "products"
    with ops.conv_implementation("xla"):
        assert ops.resolve_implementation() == "xla" and ops.resolve_implementation(
            "products") == "products"
        with ops.conv_implementation("products"):
            assert ops.resolve_implementation(None, 8) == "products"
        assert ops.conv.current_implementation() == "xla"
    assert ops.conv.current_implementation() == "auto"
    with pytest.raises(ValueError, match="conv_implementation must be one of"):
        ops.conv_implementation("cudnn")
    with pytest.raises(ValueError, match="implementation must be one of"):
        ops.resolve_implementation("fast")
    assert ops.conv.describe_implementation("auto") == (
        "conv_implementation=auto: products for kernels of >= 64x64 channels and depthwise ones, "
        "XLA's own otherwise (cpu)")


def test_a_decorated_function_is_traced_under_its_setting_whenever_it_is_traced():
    """A jitted function decorated with ``conv_implementation`` keeps its setting at every trace
    (the engine's steps), whatever setting is in force when it is (re)traced."""
    x, kernel = jnp.ones((1, 9, 9, 4)), jnp.ones((3, 3, 4, 4))

    @ops.conv_implementation("xla")
    def loss(a, b):
        return ops.conv2d(a, b, padding=1).sum()

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
    with ops.conv_implementation("products"):
        assert count_convolutions(grads, x, kernel) == 3  # XLA's own: no product gradients
        grads(x, kernel)
    assert count_convolutions(grads, x[:, :7], kernel) == 3  # a retrace


@pytest.mark.parametrize("kwargs, message", [
    ({"stride": 0}, "stride must be a positive int"),
    ({"dilation": (1, 2, 3)}, "dilation must be a positive int or a pair"),
    ({"padding": -1}, "padding must hold non-negative ints"),
    ({"padding": (1, 1)}, "padding must be an int or"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ops.conv2d(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 4)), **kwargs)
    with pytest.raises(ValueError, match="kernel expects 3 input channels"):
        ops.conv2d(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 3, 4)))


def pointwise_reference(x, kernel, cotangent):
    """Output and both gradients of ``lax.dot_general`` over the last axis, in float64."""
    with jax.enable_x64(True):
        x, kernel, cotangent = (jnp.asarray(a, jnp.float64) for a in (x, kernel, cotangent))
        y, vjp = jax.vjp(lambda a, b: jnp.tensordot(a, b, axes=1), x, kernel)
        return [np.asarray(a) for a in (y, *vjp(cotangent))]


@pytest.mark.parametrize("implementation", ["products", "xla"])
@pytest.mark.parametrize("shape, channels", [
    ((2, 7, 5, 6), 16),  # widening, as a bottleneck's conv3 (x is the transposed operand)
    ((2, 7, 5, 16), 6),  # narrowing, as conv1 (dy is)
    ((3, 9, 8), 8),  # square, another rank
])
def test_pointwise_equals_a_product_in_value_and_gradients(shape, channels, implementation):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((shape[-1], channels)).astype(np.float32)
    fn = lambda a, b: ops.pointwise(a, b, implementation=implementation)  # noqa: E731
    y, vjp = jax.vjp(jax.jit(fn), jnp.asarray(x), jnp.asarray(kernel))
    cotangent = rng.standard_normal(y.shape).astype(np.float32)
    dx, dk = vjp(jnp.asarray(cotangent))
    assert y.dtype == dx.dtype == dk.dtype == jnp.float32
    for ours, want in zip((y, dx, dk), pointwise_reference(x, kernel, cotangent)):
        assert_close(np.asarray(ours), want)


@pytest.mark.parametrize("cin, cout", [(4, 12), (12, 4)])
def test_pointwise_kernel_gradient_transposes_the_narrower_operand(cin, cout):
    """The kernel gradient's product has the operand with fewer channels on the left (the one
    XLA:CPU transposes in memory); JAX's own differentiation always puts ``dy`` there."""
    x, kernel = jnp.ones((2, 5, 5, cin)), jnp.ones((cin, cout))

    def left_operands(implementation):
        grad = jax.grad(lambda b: ops.pointwise(x, b, implementation=implementation).sum())
        jaxpr = jax.make_jaxpr(grad)(kernel).jaxpr
        dots = [e for e in _equations(jaxpr) if e.primitive.name == "dot_general"
                and e.params["dimension_numbers"][0][0] == (0, 1, 2)]
        return [e.invars[0].aval.shape[-1] for e in dots]

    assert left_operands("products") == [min(cin, cout)]
    assert left_operands("xla") == [cout]


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in its equations' parameters."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)


# the emulated CPU without BF16 instructions in the slow set
@pytest.mark.parametrize("native", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["bf16 CPU", "AVX2 CPU"])
def test_pointwise_bfloat16_keeps_the_dtype_and_refuses_bad_shapes(native, monkeypatch):
    monkeypatch.setattr(conv_module, "cpu_has_bfloat16_products", lambda: native)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 32)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((32, 64)) * 0.1, jnp.bfloat16)
    cotangent = jnp.asarray(rng.standard_normal((2, 8, 8, 64)), jnp.bfloat16)
    y, vjp = jax.vjp(lambda a, b: ops.pointwise(a, b, implementation="products"), x, kernel)
    dx, dk = vjp(cotangent)
    assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16
    wants = pointwise_reference(*(a.astype(np.float32) for a in (x, kernel, cotangent)))
    # bfloat16 inputs, float32 sums over at most 128 terms, one bfloat16 rounding: 2^-8 relative
    for ours, want in zip((y, dx, dk), wants):
        np.testing.assert_allclose(np.asarray(ours, np.float32), want, rtol=2**-8,
                                   atol=2**-8 * np.abs(want).max())
    # natively every product multiplies bfloat16 and sums in float32 (XLA:CPU's bfloat16 ->
    # bfloat16 products and its float32 ones are the slow ones there); elsewhere y and dx are
    # bfloat16 products and dK a float32 one
    jaxpr = jax.make_jaxpr(lambda a, b: jax.vjp(
        lambda u, v: ops.pointwise(u, v, implementation="products"), a, b)[1](cotangent))(x, kernel)
    products = [(*(str(v.aval.dtype) for v in e.invars), str(e.outvars[0].aval.dtype))
                for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert products == ([("bfloat16", "bfloat16", "float32")] * 3 if native else
                        [("bfloat16", "bfloat16", "bfloat16")] * 2 + [("float32",) * 3])
    with pytest.raises(ValueError, match="kernel must have rank 2"):
        ops.pointwise(x, kernel[None])
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., C\) with C = 16"):
        ops.pointwise(x, kernel[:16])


@pytest.mark.parametrize("use_bias", [pytest.param(True, marks=pytest.mark.slow), False])
def test_conv_module_equals_flax_conv(use_bias):
    """Same parameter tree, same initial values, same outputs and gradients as ``nn.Conv``
    with PyTorch's symmetric padding; ``conv`` builds it for every ungrouped k > 1 or strided
    convolution."""
    assert isinstance(conv(8, 3), Conv) and isinstance(conv(8, 1, stride=2), Conv)
    assert isinstance(conv(8, 1), PointwiseConv) and isinstance(conv(8, 3, groups=2), nn.Conv)
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 6))
    ours = Conv(8, kernel_size=3, stride=2, dilation=2, padding=2, use_bias=use_bias)
    ref = nn.Conv(8, (3, 3), strides=(2, 2), padding=((2, 2), (2, 2)), kernel_dilation=(2, 2),
                  use_bias=use_bias)
    v, v_ref = ours.init(jax.random.key(1), x), ref.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, v, v_ref)
    v = jax.tree.map(lambda a: a + 0.1, v)
    np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
    loss = lambda m: lambda p, a: (m.apply(p, a) ** 2).sum()  # noqa: E731
    g = jax.grad(loss(ours), argnums=(0, 1))(v, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(v, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), g, g_ref)
    half = Conv(8, kernel_size=3, padding=1, use_bias=use_bias, dtype=jnp.bfloat16).apply(v, x)
    assert half.dtype == jnp.bfloat16


@pytest.mark.slow  # default run time
@pytest.mark.parametrize("implementation", ["products", "xla"])
def test_depthwise_equals_xlas_grouped_convolution_in_value_and_gradients(implementation):
    rng = np.random.default_rng(4)
    # odd and even kernels (PyTorch's padding: d (k - 1) // 2 before, the rest after), dilated
    for k, d in ((3, 1), (4, 1), (3, 4), (4, 3)):
        x = rng.standard_normal((2, 11, 9, 6)).astype(np.float32)
        kernel = rng.standard_normal((k, k, 1, 6)).astype(np.float32)
        fn = lambda a, b: ops.depthwise_conv2d(  # noqa: E731
            a, b, dilation=d, implementation=implementation)
        y, vjp = jax.vjp(jax.jit(fn), jnp.asarray(x), jnp.asarray(kernel))
        cotangent = rng.standard_normal(y.shape).astype(np.float32)
        with jax.enable_x64(True):
            lo = d * (k - 1) // 2
            ref = lambda a, b: jax.lax.conv_general_dilated(  # noqa: E731
                a, b, (1, 1), [(lo, d * (k - 1) - lo)] * 2, rhs_dilation=(d, d),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6)
            y_want, ref_vjp = jax.vjp(ref, jnp.asarray(x, jnp.float64),
                                      jnp.asarray(kernel, jnp.float64))
            wants = [np.asarray(a) for a in (y_want, *ref_vjp(jnp.asarray(cotangent, jnp.float64)))]
        for ours, want in zip((y, *vjp(jnp.asarray(cotangent))), wants):
            assert_close(np.asarray(ours), want)
    with pytest.raises(ValueError, match=r"kernel must be \(k, k, 1, C\) with C = 6"):
        ops.depthwise_conv2d(jnp.ones((1, 5, 5, 6)), jnp.ones((3, 3, 1, 4)))
    with pytest.raises(ValueError, match="dilation must be a positive integer"):
        ops.depthwise_conv2d(jnp.ones((1, 5, 5, 6)), jnp.ones((3, 3, 1, 6)), dilation=0)


# every op is compared under each implementation above; whole models (compiled three times
# over) in the slow set
@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, settings", [
    ("danet_r18_d8", {"head_channels": 16, "aux_channels": 8,  # narrow: "auto" is "xla" here
                      "backbone_kwargs": {"width": 8, "stem_width": 8}}, ("products",)),
    ("segformer_mit_b0", {"head_channels": 32}, ("auto", "products")),
])
def test_a_whole_models_logits_and_gradients_are_the_same_under_every_setting(name, kwargs,
                                                                              settings):
    """Every ``conv_implementation`` gives a model in training mode (ResNet: stem, strided,
    dilated and 1x1 convolutions, the heads' 3x3s; MiT: patch embeddings, depthwise Mix-FFN)
    the same logits and parameter gradients as XLA's own, to float32 rounding (1e-4 of the
    largest; some gradients are zero by construction, equal then to within 1e-6 of the largest
    gradient: the attention key biases, whose shift the softmax cancels, and biases a
    BatchNorm in training mode cancels)."""
    model = models.create(name, num_classes=4, **kwargs)
    images = jax.random.normal(jax.random.key(0), (2, 40, 32, 3))
    variables = model.init(jax.random.key(1), images)

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, images, train=True,
                             mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
        return sum((o ** 2).mean() for o in jax.tree.leaves(out)), out["out"]

    results = {}
    for implementation in ("xla", *settings):
        fn = ops.conv_implementation(implementation)(jax.grad(loss, has_aux=True))
        results[implementation] = jax.jit(fn)(variables["params"])
    grads, logits = results["xla"]
    flat = jax.tree_util.tree_leaves_with_path(grads)
    scales = [float(np.abs(want).max()) for _, want in flat]
    assert len(flat) > 40 and sum(s > 0 for s in scales) > 0.85 * len(flat)
    zero = 1e-6 * max(scales)  # gradients zero by construction are rounding noise below it
    for implementation in settings:
        ours, our_logits = results[implementation]
        np.testing.assert_allclose(our_logits, logits, rtol=1e-4,
                                   atol=1e-4 * float(np.abs(logits).max()))
        for (path, want), got, scale in zip(flat, jax.tree.leaves(ours), scales):
            where = f"{implementation} {jax.tree_util.keystr(path)}"
            if scale < zero:
                assert np.abs(got).max() < zero, where
            else:
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale,
                                           err_msg=where)
