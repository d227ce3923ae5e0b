"""ops.conv2d (gradients as matrix products), ops.pointwise and blocks.common.Conv /
PointwiseConv against XLA's convolution, a plain product and their own differentiation, computed
in float64."""

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
@pytest.mark.parametrize("gradients", ["products", pytest.param("xla", marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d_equals_xla_convolution_in_value_and_gradients(case, gradients):
    k, stride, dilation, padding = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 13, 11, 5)).astype(np.float32)
    kernel = rng.standard_normal((k, k, 5, 6)).astype(np.float32)
    fn = lambda a, b: ops.conv2d(a, b, stride=stride, dilation=dilation,  # noqa: E731
                                 padding=padding, gradients=gradients)
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

    def grads(gradients):
        loss = lambda a, b: ops.conv2d(a, b, stride=stride, padding=1,  # noqa: E731
                                       gradients=gradients).sum()
        return jax.grad(loss, argnums=(0, 1))

    assert count_convolutions(grads("products"), x, kernel) == convolutions
    assert count_convolutions(grads("xla"), x, kernel) == 3


@pytest.mark.parametrize("native", [True, False], ids=["bf16 CPU", "AVX2 CPU"])
@pytest.mark.parametrize("case", list(CASES))
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
                                 padding=padding, gradients="products")
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


def test_gradient_path_follows_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv(ops.conv.GRADIENTS_ENV, raising=False)
    assert ops.conv_gradients() == "products"  # the tests run on CPU
    assert ops.conv_gradients("auto", 32 * 64) == "xla"  # narrower than 64 x 64 channel pairs
    assert ops.conv_gradients("products", 3 * 8) == "products"
    assert ops.conv_gradients("xla") == "xla"
    monkeypatch.setenv("ATTNZOO_CONV_GRADIENTS", "xla")
    assert ops.conv_gradients() == "xla" and ops.conv_gradients("products") == "products"
    monkeypatch.setenv("ATTNZOO_CONV_GRADIENTS", "cudnn")
    with pytest.raises(ValueError, match="ATTNZOO_CONV_GRADIENTS must be one of"):
        ops.conv_gradients()
    with pytest.raises(ValueError, match="gradients must be one of"):
        ops.conv_gradients("fast")


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


@pytest.mark.parametrize("gradients", ["products", "xla"])
@pytest.mark.parametrize("shape, channels", [
    ((2, 7, 5, 6), 16),  # widening, as a bottleneck's conv3 (x is the transposed operand)
    ((2, 7, 5, 16), 6),  # narrowing, as conv1 (dy is)
    ((3, 9, 8), 8),  # square, another rank
])
def test_pointwise_equals_a_product_in_value_and_gradients(shape, channels, gradients):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((shape[-1], channels)).astype(np.float32)
    fn = lambda a, b: ops.pointwise(a, b, gradients=gradients)  # noqa: E731
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

    def left_operands(gradients):
        grad = jax.grad(lambda b: ops.pointwise(x, b, gradients=gradients).sum())
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


@pytest.mark.parametrize("native", [True, False], ids=["bf16 CPU", "AVX2 CPU"])
def test_pointwise_bfloat16_keeps_the_dtype_and_refuses_bad_shapes(native, monkeypatch):
    monkeypatch.setattr(conv_module, "cpu_has_bfloat16_products", lambda: native)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 32)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((32, 64)) * 0.1, jnp.bfloat16)
    cotangent = jnp.asarray(rng.standard_normal((2, 8, 8, 64)), jnp.bfloat16)
    y, vjp = jax.vjp(lambda a, b: ops.pointwise(a, b, gradients="products"), x, kernel)
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
        lambda u, v: ops.pointwise(u, v, gradients="products"), a, b)[1](cotangent))(x, kernel)
    products = [(*(str(v.aval.dtype) for v in e.invars), str(e.outvars[0].aval.dtype))
                for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert products == ([("bfloat16", "bfloat16", "float32")] * 3 if native else
                        [("bfloat16", "bfloat16", "bfloat16")] * 2 + [("float32",) * 3])
    with pytest.raises(ValueError, match="kernel must have rank 2"):
        ops.pointwise(x, kernel[None])
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., C\) with C = 16"):
        ops.pointwise(x, kernel[:16])


@pytest.mark.parametrize("use_bias", [True, False])
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


@pytest.mark.slow
def test_a_whole_models_gradients_are_the_same_on_either_path(monkeypatch):
    """A narrow DANet-R18-D8 in training mode (stem, strided and dilated 3x3 convolutions, the
    head's 3x3s): every parameter's gradient with products equals XLA's own (some are zero by
    construction: PAM's key bias, whose shift the softmax cancels)."""
    model = models.create("danet_r18_d8", num_classes=4, head_channels=16, aux_channels=8,
                          backbone_kwargs={"width": 8, "stem_width": 8})
    images = jax.random.normal(jax.random.key(0), (2, 40, 32, 3))
    variables = model.init(jax.random.key(1), images)

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, images, train=True,
                             mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
        return sum((o ** 2).mean() for o in jax.tree.leaves(out))

    grads = {}
    for path in ("products", "xla"):
        monkeypatch.setenv("ATTNZOO_CONV_GRADIENTS", path)
        grads[path] = jax.jit(jax.grad(loss))(variables["params"])
    flat = jax.tree_util.tree_leaves_with_path(grads["xla"])
    scales = [float(np.abs(want).max()) for _, want in flat]
    assert len(flat) > 40 and sum(s > 0 for s in scales) > 0.9 * len(flat)
    for (path, want), ours, scale in zip(flat, jax.tree.leaves(grads["products"]), scales):
        np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4 * max(scale, 1e-12),
                                   err_msg=jax.tree_util.keystr(path))
