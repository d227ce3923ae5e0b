"""The convolutions every block runs on, and the one setting that picks how they are computed.

Three convolutions: :func:`conv2d` (any ungrouped one), :func:`pointwise` (1x1, stride 1) and
:func:`depthwise_conv2d` (one filter per channel, stride 1). Each has two implementations of
the same values (float32 rounding differs, nothing else): ``"xla"``, XLA's own convolution and
JAX's differentiation of it, and ``"products"``, the forms below, written for XLA:CPU, where
they are faster. The setting (:data:`IMPLEMENTATIONS`) is ``"auto"`` (products on CPU where
they gain, XLA's elsewhere: :func:`resolve_implementation`), ``"products"`` or ``"xla"``; a run
records it as ``config.conv_implementation``, the engine's jitted steps trace under it
(:func:`conv_implementation`), and ``evaluate`` / ``predict`` print it.

The convolution itself is ``lax.conv_general_dilated`` (NHWC input, HWIO kernel). With stride
``s``, dilation ``d`` and the input zero-padded by ``p`` to ``x_pad``:

    y[b, h, w, o] = sum_{i, j, c} x_pad[b, s h + d i, s w + d j, c] K[i, j, c, o]

Its two gradients, for an upstream gradient ``dy``:

    dK[i, j, c, o] = sum_{b, h, w} x_pad[b, s h + d i, s w + d j, c] dy[b, h, w, o]
    dx[b, u, v, c] = sum_{i, j, o} dy[b, (u + p - d i) / s, (v + p - d j) / s, o] K[i, j, c, o]

XLA:CPU lowers ``dK`` (its transpose of the convolution with respect to the kernel) to a
convolution with batch and feature axes swapped, which runs at 0.25-0.45 of the forward's speed
(``benchmarks/cpu_profile.py``). The products path computes ``dK`` as ``k_h * k_w`` matrix
products instead, one per tap: the ``(N, O)`` gradient times the ``(N, C)`` window of ``x_pad``
the tap reads, with ``N = B H_out W_out``. At stride 1, ``dx`` is a forward convolution of
``dy`` with the kernel flipped in space and its in/out axes swapped (dilation ``d``, padding
``d (k - 1) - p`` per side); at larger strides it stays XLA's own transpose.

Under bfloat16 (``compute_dtype="bfloat16"``) XLA:CPU's convolution runs at its float32 speed,
while its bfloat16 x bfloat16 -> float32 matrix products run up to 2x faster on a CPU with
AVX512_BF16 or AMX (and slower than float32 on an AVX2 CPU). On such a CPU the products path's
forward convolution (and ``dx`` at stride 1) is ``y = sum_{i, j} window_ij(x_pad) K[i, j]``,
one channel product per tap summed in float32 and rounded to bfloat16 once (DANet-R50-D8
bfloat16 inference 1.83 s -> 1.00 s, docs/benchmarks.md).

A 1x1, stride-1 convolution is the product ``y = x K`` over the channel axis (:func:`pointwise`).
Its kernel gradient ``dK = x^T dy`` contracts the ``N`` positions of two ``(N, C)`` and ``(N, O)``
operands, and XLA:CPU's matrix-product kernels take their left operand with the contracted axis
last: one operand is transposed in memory first, a strided pass fused into whatever elementwise
work produced it (in a ResNet the BatchNorm gradient). JAX's own gradient always transposes
``dy``; the products path transposes the narrower of ``x`` and ``dy`` (measured: the
DANet-R50-D8 train step's transposing fusions 1.13 s -> 0.46 s, ``benchmarks/step_profile.py``).

A depthwise ``k x k`` convolution's products path is the sum of ``k^2`` shifted per-channel
products: XLA:CPU's grouped convolution runs 2.5x (forward) to 4x (gradient) slower.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from attnzoo._checks import check_choice, check_floating, check_pair, check_rank

Array = jax.Array
Pair = tuple[int, int]
Padding = tuple[Pair, Pair]

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
IMPLEMENTATIONS = ("auto", "products", "xla")
# "auto" takes the products for kernels with at least this many (input, output) channel pairs
MIN_CHANNEL_PAIRS = 64 * 64

_IMPLEMENTATION: contextvars.ContextVar[str] = contextvars.ContextVar(
    "attnzoo_conv_implementation", default="auto")


class conv_implementation(contextlib.ContextDecorator):  # noqa: N801 - used as a function
    """Within the ``with`` block, convolutions called without ``implementation`` take ``name``
    (one of :data:`IMPLEMENTATIONS`; checked here). The setting is read when a function is
    traced, so trace jitted functions inside the block, or decorate the function jitted
    (``@conv_implementation("xla")``): then every trace of it, whenever it happens, runs under
    ``name`` (the engine's steps are decorated with their config's setting)."""

    def __init__(self, name: str) -> None:
        check_choice(name, IMPLEMENTATIONS, "conv_implementation")
        self.name = name
        self._token: contextvars.Token[str] | None = None

    def _recreate_cm(self) -> conv_implementation:
        return conv_implementation(self.name)  # one per decorated call: calls may nest

    def __enter__(self) -> conv_implementation:
        self._token = _IMPLEMENTATION.set(self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        _IMPLEMENTATION.reset(self._token)


def current_implementation() -> str:
    """The setting in force (:func:`conv_implementation`; ``"auto"`` outside any block)."""
    return _IMPLEMENTATION.get()


def resolve_implementation(implementation: str | None = None,
                           channel_pairs: int | None = None) -> str:
    """The path a convolution takes: ``"products"`` or ``"xla"``.

    ``implementation`` (default: :func:`current_implementation`) ``"auto"`` picks by backend
    and size: the products on CPU, for :func:`conv2d` / :func:`pointwise` only with kernels of
    at least ``MIN_CHANNEL_PAIRS`` ``C x O`` (``channel_pairs``; 64 x 64), where they are faster
    (1.2-3.7x for the kernel gradient; ``benchmarks/cpu_profile.py``): narrower kernels' per-tap
    products are too small to gain (the quickstart's step: 8% slower with them); XLA's own on
    GPU and TPU, whose convolution libraries compute both gradients at full speed.
    ``channel_pairs=None`` (a depthwise convolution) skips the size rule.
    """
    choice = current_implementation() if implementation is None else implementation
    check_choice(choice, IMPLEMENTATIONS, "implementation")
    if choice != "auto":
        return choice
    wide = channel_pairs is None or channel_pairs >= MIN_CHANNEL_PAIRS
    return "products" if jax.default_backend() == "cpu" and wide else "xla"


def describe_implementation(implementation: str | None = None) -> str:
    """One line saying what ``implementation`` (default: the one in force) computes on this
    backend, for the commands' logs."""
    choice = current_implementation() if implementation is None else implementation
    check_choice(choice, IMPLEMENTATIONS, "conv_implementation")
    backend = jax.default_backend()
    side = math.isqrt(MIN_CHANNEL_PAIRS)
    if choice == "auto":
        detail = (f"products for kernels of >= {side}x{side} channels and depthwise ones, XLA's "
                  f"own otherwise ({backend})" if backend == "cpu" else
                  f"XLA's own convolutions ({backend})")
    elif choice == "products":
        detail = "products for every convolution"
    else:
        detail = "XLA's own convolutions"
    return f"conv_implementation={choice}: {detail}"


def _plain(x: Array, kernel: Array, stride: Pair, dilation: Pair, padding: Padding) -> Array:
    return lax.conv_general_dilated(x, kernel, stride, padding, rhs_dilation=dilation,
                                    dimension_numbers=DIMENSIONS)


def _windows(x: Array, kernel_shape: tuple[int, ...], out_shape: Pair, stride: Pair,
             dilation: Pair, padding: Padding) -> list[Array]:
    """The strided window of the padded input that each tap ``(i, j)`` reads, in row order:
    ``x_pad[:, s_h h + d_h i, s_w w + d_w j]`` over the output grid."""
    kh, kw = kernel_shape[:2]
    (sh, sw), (dh, dw), (ho, wo) = stride, dilation, out_shape
    x_pad = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    return [x_pad[:, dh * i:dh * i + sh * (ho - 1) + 1:sh, dw * j:dw * j + sw * (wo - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]


def _tap_products(x: Array, kernel: Array, stride: Pair, dilation: Pair,
                  padding: Padding) -> Array:
    """The convolution as ``y = sum_{i, j} window_ij(x) K[i, j]``, one channel product per tap,
    summed in float32 and rounded to ``x``'s dtype once."""
    out_shape = tuple((n + lo + hi - d * (k - 1) - 1) // s + 1 for n, (lo, hi), d, k, s in
                      zip(x.shape[1:3], padding, dilation, kernel.shape[:2], stride))
    windows = _windows(x, kernel.shape, out_shape, stride, dilation, padding)
    taps = kernel.reshape(-1, *kernel.shape[2:])
    y = sum(lax.dot_general(w, k, (((3,), (0,)), ((), ())), preferred_element_type=jnp.float32)
            for w, k in zip(windows, taps))
    return y.astype(x.dtype)


# CPU flags under which XLA:CPU's bfloat16 products run faster than its float32 ones
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bfloat16_products() -> bool:
    """Whether this (Linux, x86) CPU multiplies bfloat16 natively: ``/proc/cpuinfo`` lists
    AVX512_BF16 or AMX-BF16. There XLA:CPU's bfloat16 x bfloat16 -> float32 products ran at
    250-500 GFLOP/s against 110-290 in float32; on an AVX2 CPU at 75-100 against 150-160
    (docs/benchmarks.md). False where the file is missing."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)


def _sums_in_float32(dtype: jnp.dtype) -> bool:
    """Whether the products path sums ``dtype`` products in float32: narrower than float32 on a
    CPU that multiplies bfloat16 natively (:func:`cpu_has_bfloat16_products`)."""
    return jnp.finfo(dtype).bits < 32 and cpu_has_bfloat16_products()


def _product_path_forward(x: Array, kernel: Array, stride: Pair, dilation: Pair,
                          padding: Padding) -> Array:
    """The forward convolution of the products path: XLA's own, or under a narrower dtype
    than float32 on a CPU that multiplies bfloat16 natively (:func:`cpu_has_bfloat16_products`)
    the tap products: XLA:CPU's bfloat16 convolution runs at its float32 speed there, its
    bfloat16 -> float32 products up to 2x faster."""
    if _sums_in_float32(x.dtype):
        return _tap_products(x, kernel, stride, dilation, padding)
    return _plain(x, kernel, stride, dilation, padding)


def _kernel_gradient(x: Array, dy: Array, kernel_shape: tuple[int, ...], stride: Pair,
                     dilation: Pair, padding: Padding) -> Array:
    """``dK``: for each tap, ``dy^T`` times the strided window of the padded input it read."""
    windows = _windows(x, kernel_shape, dy.shape[1:3], stride, dilation, padding)
    # (O, C) per tap: contracting batch and both spatial axes; fp32 accumulation under bf16
    taps = [lax.dot_general(dy, w, (((0, 1, 2), (0, 1, 2)), ((), ())),
                            preferred_element_type=jnp.float32) for w in windows]
    return jnp.stack(taps).swapaxes(1, 2).reshape(kernel_shape)


def _input_gradient(x: Array, kernel: Array, dy: Array, stride: Pair, dilation: Pair,
                    padding: Padding) -> Array:
    """``dx``: at stride 1 the forward convolution of ``dy`` with the flipped, transposed
    kernel; otherwise (or where that needs negative padding) XLA's transpose."""
    kh, kw = kernel.shape[:2]
    edges = tuple((d * (k - 1) - lo, d * (k - 1) - hi)
                  for k, d, (lo, hi) in zip((kh, kw), dilation, padding))
    if stride == (1, 1) and min(min(e) for e in edges) >= 0:
        flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
        return _product_path_forward(dy, flipped, (1, 1), dilation, edges)
    _, transpose = jax.vjp(lambda a: _plain(a, kernel, stride, dilation, padding), x)
    return transpose(dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_with_product_gradients(x: Array, kernel: Array, stride: Pair, dilation: Pair,
                                 padding: Padding) -> Array:
    return _product_path_forward(x, kernel, stride, dilation, padding)


def _forward(x: Array, kernel: Array, stride: Pair, dilation: Pair, padding: Padding
             ) -> tuple[Array, tuple[Array, Array]]:
    return _product_path_forward(x, kernel, stride, dilation, padding), (x, kernel)


def _backward(stride: Pair, dilation: Pair, padding: Padding, residuals: tuple[Array, Array],
              dy: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    dx = _input_gradient(x, kernel, dy, stride, dilation, padding)
    dk = _kernel_gradient(x, dy, kernel.shape, stride, dilation, padding)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_with_product_gradients.defvjp(_forward, _backward)


def _channel_product(x: Array, kernel: Array) -> Array:
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _native_sums(a: Array, b: Array, contract: tuple) -> Array:
    """``lax.dot_general(a, b, (contract, ((), ())))`` in ``a``'s dtype; for inputs narrower than
    float32 on a CPU that multiplies bfloat16 natively (:func:`cpu_has_bfloat16_products`)
    summed in float32 first: there XLA:CPU's bfloat16 x bfloat16 -> float32 products run
    1.5-2.7x faster than its bfloat16 -> bfloat16 ones (docs/benchmarks.md)."""
    wide = jnp.float32 if _sums_in_float32(a.dtype) else None
    return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=wide).astype(a.dtype)


@jax.custom_vjp
def _pointwise_narrow_transposed(x: Array, kernel: Array) -> Array:
    return _native_sums(x, kernel, ((x.ndim - 1,), (0,)))


def _pointwise_forward(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _native_sums(x, kernel, ((x.ndim - 1,), (0,))), (x, kernel)


def _pointwise_backward(residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    dx = _native_sums(dy, kernel, ((dy.ndim - 1,), (1,)))
    axes = tuple(range(x.ndim - 1))
    contract = ((axes, axes), ((), ()))
    if _sums_in_float32(x.dtype):
        # bfloat16 operands, float32 sums, ``x`` on the left: 2x the float32 operands' rate
        # there; with ``dy`` on the left and the result transposed XLA:CPU's plain dot kernel
        # refuses bfloat16 x bfloat16 -> float32 (docs/benchmarks.md)
        dk = lax.dot_general(x, dy, contract, preferred_element_type=jnp.float32)
        return dx.astype(x.dtype), dk.astype(kernel.dtype)
    # elsewhere float32 sums as float32 operands; the left operand is the one transposed in
    # memory: the one with fewer channels
    wide = jnp.promote_types(x.dtype, jnp.float32)
    xw, dyw = x.astype(wide), dy.astype(wide)
    if kernel.shape[0] < kernel.shape[1]:
        dk = lax.dot_general(xw, dyw, contract)
    else:
        dk = lax.dot_general(dyw, xw, contract).T
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_pointwise_narrow_transposed.defvjp(_pointwise_forward, _pointwise_backward)


def pointwise(x: Array, kernel: Array, *, implementation: str | None = None) -> Array:
    """A 1x1, stride-1 convolution as a product over the last axis: ``y[..., o] = sum_c x[..., c]
    K[c, o]``, with gradients ``dx = dy K^T`` and ``dK = x^T dy`` (summed over every other axis).

    Equals ``lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))`` in value; on the
    products path (:func:`resolve_implementation`; on CPU by default) ``dK`` is computed
    with the narrower of ``x`` and ``dy`` as the transposed operand (module docstring), in
    float32 under bfloat16. Under bfloat16 on a CPU that multiplies bfloat16 natively
    (:func:`cpu_has_bfloat16_products`) the value, ``dx`` and ``dK`` (``x`` on the left)
    instead multiply bfloat16 and sum in float32 before their bfloat16 rounding (faster
    there, and more exact); ``"xla"`` is JAX's own differentiation.

    Args:
      x: ``(..., C)``, at least 2-D.
      kernel: ``(C, O)``.
      implementation: ``"auto"``, ``"products"`` or ``"xla"``; None: the setting in force
        (:func:`conv_implementation`).

    Returns:
      ``(..., O)``.
    """
    check_rank(kernel, 2, "kernel", "C, O")
    check_floating(x, "x")
    if x.ndim < 2 or x.shape[-1] != kernel.shape[0]:
        raise ValueError(f"x must be (..., C) with C = {kernel.shape[0]} (kernel shape "
                         f"{tuple(kernel.shape)}); got shape {tuple(x.shape)}")
    if resolve_implementation(implementation, kernel.shape[0] * kernel.shape[1]) == "xla":
        return _channel_product(x, kernel)
    return _pointwise_narrow_transposed(x, kernel)


def _padding(value: int | tuple[Pair, Pair]) -> Padding:
    pads = ((value, value), (value, value)) if isinstance(value, int) else value
    try:
        (a, b), (c, d) = pads
    except (TypeError, ValueError):
        raise ValueError("padding must be an int or ((top, bottom), (left, right)); "
                         f"got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (a, b, c, d)):
        raise ValueError(f"padding must hold non-negative ints; got {value!r}")
    return (a, b), (c, d)


def conv2d(
    x: Array,
    kernel: Array,
    *,
    stride: int | Pair = 1,
    dilation: int | Pair = 1,
    padding: int | Padding = 0,
    implementation: str | None = None,
) -> Array:
    """2-D convolution of NHWC ``x`` with an HWIO ``kernel`` (no groups, zero padding).

    Equals ``lax.conv_general_dilated(x, kernel, stride, padding, rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"))`` in value; its gradients follow
    ``implementation`` (:func:`resolve_implementation`): ``"products"`` computes ``dK`` as one matrix
    product per kernel tap and, at stride 1, ``dx`` as a forward convolution (module
    docstring), and under bfloat16 on a CPU that multiplies it natively
    (:func:`cpu_has_bfloat16_products`) the value too as float32-summed tap products;
    ``"xla"`` is XLA's own differentiation.

    Args:
      x: ``(B, H, W, C)``.
      kernel: ``(k_h, k_w, C, O)``.
      stride: the step of the output grid, an int or ``(s_h, s_w)``.
      dilation: the spacing of the kernel taps, an int or ``(d_h, d_w)``.
      padding: zeros added to each side, an int or ``((top, bottom), (left, right))``.
      implementation: ``"auto"``, ``"products"`` or ``"xla"``; None: the setting in force
        (:func:`conv_implementation`).

    Returns:
      ``(B, H_out, W_out, O)`` with ``H_out = (H + top + bottom - d_h (k_h - 1) - 1) // s_h + 1``.
    """
    check_rank(x, 4, "x", "B, H, W, C")
    check_rank(kernel, 4, "kernel", "k_h, k_w, C, O")
    check_floating(x, "x")
    if kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"kernel expects {kernel.shape[2]} input channels (shape "
                         f"{tuple(kernel.shape)}); x has {x.shape[-1]} (shape {tuple(x.shape)})")
    stride, dilation = check_pair(stride, "stride"), check_pair(dilation, "dilation")
    pads = _padding(padding)
    if resolve_implementation(implementation, kernel.shape[2] * kernel.shape[3]) == "xla":
        return _plain(x, kernel, stride, dilation, pads)
    return _conv_with_product_gradients(x, kernel, stride, dilation, pads)


def depthwise_conv2d(x: Array, kernel: Array, *, dilation: int = 1,
                     implementation: str | None = None) -> Array:
    """A depthwise ``k x k`` convolution, stride 1, with PyTorch's symmetric zero padding
    (``p = d (k - 1) // 2`` before, ``d (k - 1) - p`` after, for dilation ``d``):
    ``y[b, h, w, c] = sum_{i, j} x_pad[b, h + d i, w + d j, c] K[i, j, 0, c]``.

    Equals ``lax.conv_general_dilated(..., feature_group_count=C)`` in value; the products path
    (:func:`resolve_implementation`; on CPU by default) is the sum of the ``k^2`` shifted
    per-channel products.

    Args:
      x: ``(B, H, W, C)``.
      kernel: ``(k, k, 1, C)`` (``nn.Conv(feature_group_count=C)``'s layout).
      dilation: the spacing ``d`` of the kernel's taps (DeepLabV3+'s atrous separable convs).
      implementation: ``"auto"``, ``"products"`` or ``"xla"``; None: the setting in force.

    Returns:
      ``(B, H, W, C)``.
    """
    check_rank(x, 4, "x", "B, H, W, C")
    check_rank(kernel, 4, "kernel", "k, k, 1, C")
    check_floating(x, "x")
    k, c = kernel.shape[0], x.shape[-1]
    if kernel.shape != (k, k, 1, c):
        raise ValueError(f"kernel must be (k, k, 1, C) with C = {c} (x shape {tuple(x.shape)}); "
                         f"got {tuple(kernel.shape)}")
    if dilation < 1:
        raise ValueError(f"dilation must be a positive integer; got {dilation!r}")
    lo = dilation * (k - 1) // 2
    hi = dilation * (k - 1) - lo
    if resolve_implementation(implementation) == "xla":
        return lax.conv_general_dilated(x, kernel, (1, 1), ((lo, hi), (lo, hi)),
                                        rhs_dilation=(dilation, dilation),
                                        dimension_numbers=DIMENSIONS, feature_group_count=c)
    h, w = x.shape[1:3]
    x_pad = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    d = dilation
    return sum(x_pad[:, d * i:d * i + h, d * j:d * j + w] * kernel[i, j, 0]
               for i in range(k) for j in range(k))
