"""``attnzoo.onnx_graph``: each primitive's ONNX translation, run by onnxruntime on random
inputs, equals JAX's jitted result (1e-5 of the largest value; integers and booleans exactly),
with static shapes and with a symbolic batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

ort = pytest.importorskip("onnxruntime")
from attnzoo.onnx_graph import UnsupportedPrimitiveError, to_onnx  # noqa: E402

RNG = np.random.default_rng(0)
W = RNG.standard_normal((3, 3, 4, 6)).astype(np.float32)  # a captured constant (a weight)
G = RNG.standard_normal((3, 3, 2, 6)).astype(np.float32)  # grouped: 4 inputs in 2 groups


def _run(fn, x):
    model = to_onnx(fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0], model


CASES = {
    "conv_nhwc_stride_dilation_padding": lambda x: lax.conv_general_dilated(
        x, W, (2, 1), ((1, 2), (0, 1)), rhs_dilation=(1, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC")),
    "conv_grouped_nchw_out": lambda x: lax.conv_general_dilated(
        x, G, (1, 1), "SAME", feature_group_count=2, dimension_numbers=("NHWC", "HWIO", "NCHW")),
    "dot_general_batch_in_the_middle": lambda x: lax.dot_general(
        x, x[:, :, :3], (((3,), (3,)), ((1,), (1,)))),
    "matmul_with_a_weight": lambda x: x @ W[0, 0],
    "max_pool_padded": lambda x: lax.reduce_window(
        x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (0, 1), (0, 0))),
    "take_axis_1_matrix_indices": lambda x: jnp.take(x, np.array([[4, 0], [2, 2]]), axis=1),
    "take_along_axis_broadcast": lambda x: jnp.take_along_axis(
        x.reshape(2, 35, 4), np.array([[[3, 0], [1, 1]] * 17 + [[2, 3]]]), axis=2),
    "pad_grow_and_crop": lambda x: lax.pad(x, 1.5, ((0, 0, 0), (2, -1, 0), (-2, 3, 0),
                                                   (0, 0, 0))),
    "select_bool_and_int": lambda x: lax.select_n(
        (x > 0).astype(jnp.int32) + (x > 1), x, -x, 2 * x) + jnp.where(x < 0, x, 0.5),
    "integer_powers": lambda x: x ** 3 + lax.integer_pow(x + 3.0, -2) + jnp.square(x),
    "rem_sign_abs": lambda x: lax.rem(3 * x, 0.7) + jnp.sign(x) * jnp.abs(x),
    "erfc_logistic_rsqrt_exp": lambda x: lax.erfc(x) + jax.nn.sigmoid(x) + lax.rsqrt(
        x * x + 1.0) + jnp.exp(-x * x) + jnp.tanh(x),
    "gelu_softmax_layernorm": lambda x: jax.nn.gelu(jax.nn.softmax(x, axis=-1), False) + (
        x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5),
    "reductions": lambda x: x.sum((1, 2)) + x.max(1).min(1) + x.prod(2).mean(1),
    "broadcast_concat_slice": lambda x: jnp.concatenate(
        [x[:, ::2, 1:6:2], jnp.broadcast_to(x[:, :1, :1, :], (2, 3, 2, 4))], axis=1),
    "compare_and_cast": lambda x: ((x >= 0.1) & (x != x[:, :1]) | (x <= -1)).astype(
        jnp.float32) + (x * 10).astype(jnp.int32).astype(jnp.float32),
    "argmax_as_float": lambda x: jnp.argmax(x, axis=-1).astype(jnp.float32),
    "transpose_reshape": lambda x: x.transpose(0, 3, 1, 2).reshape(2, 4, 35)[:, None],
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_translation_equals_jax(name):
    x = RNG.standard_normal((2, 7, 5, 4)).astype(np.float32)
    got, _ = _run(CASES[name], x)
    want = np.asarray(jax.jit(CASES[name])(x))
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_a_symbolic_batch_serves_every_batch_size():
    """Traced with a symbolic batch: reshapes and slices over it, a constant broadcast to it,
    attention over each image's tokens, a take_along_axis index broadcast over it, a window of
    constant indices (a gather when a dimension is symbolic), a cropping pad; run at 1 and 3."""

    def fn(x):
        b = x.shape[0]
        tokens = x.reshape(b, 35, 4)
        keys = jnp.broadcast_to(jnp.asarray(W[0, 0, :, :4]), (b, 4, 4))
        attention = jax.nn.softmax(tokens @ keys, -1) @ tokens.transpose(0, 2, 1)
        picked = jnp.take_along_axis(attention, (np.arange(35) % 7)[None, :, None], axis=2)
        window = x[:, 1:6, 3, 2:]
        cropped = lax.pad(x, 0.5, ((0, 0, 0), (1, -2, 0), (0, 0, 0), (-1, 1, 0)))
        return jnp.concatenate([picked.reshape(b, -1), window.reshape(b, -1),
                                cropped.reshape(b, -1)], axis=1)

    model = to_onnx(fn, jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, 7, 5, 4"),
                                             np.float32))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 7, 5, 4]
    for batch in (1, 3):
        x = RNG.standard_normal((batch, 7, 5, 4)).astype(np.float32)
        want = np.asarray(jax.jit(fn)(x))
        np.testing.assert_allclose(session.run(None, {"images": x})[0], want, rtol=0,
                                   atol=1e-5 * np.abs(want).max())


def test_uint8_input_and_constants_folded_at_export():
    """An equation of constants only (``iota``, ``cos``: no rule of its own) is evaluated at
    export time: the graph holds the image's operations and one constant."""
    x = RNG.integers(0, 256, (1, 3, 4, 3), np.uint8)
    fn = lambda im: im.astype(jnp.float32) * jnp.cos(jnp.arange(3.0))  # noqa: E731
    got, model = _run(fn, x)
    np.testing.assert_allclose(got, np.asarray(fn(x)), rtol=1e-6)
    assert [n.op_type for n in model.graph.node] == ["Cast", "Mul", "Identity"]


def test_what_has_no_translation_is_named():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(UnsupportedPrimitiveError, match="'cumsum'"):
        to_onnx(lambda v: jnp.cumsum(v, axis=1), jax.ShapeDtypeStruct(x.shape, x.dtype))
    with pytest.raises(UnsupportedPrimitiveError, match="'scan'"):
        to_onnx(lambda v: lax.scan(lambda c, r: (c + r, c), 0.0 * v[0], v)[1],
                jax.ShapeDtypeStruct(x.shape, x.dtype))
    with pytest.raises(UnsupportedPrimitiveError, match="computed from the image"):
        to_onnx(lambda v: jnp.take(v, jnp.argmax(v, 1), axis=1),
                jax.ShapeDtypeStruct(x.shape, x.dtype))
