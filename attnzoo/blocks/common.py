"""Building pieces shared by the blocks: PyTorch-compatible convolutions and
norms (so that reference weights port by name), gates and width rules."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_choice, check_positive

Array = jax.Array
Dtype = Any

# PyTorch BatchNorm2d defaults: momentum 0.1 on the new value == 0.9 on the running one.
BN_MOMENTUM = 0.9
BN_EPS = 1e-5

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "hard_swish": jax.nn.hard_swish,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "identity": lambda x: x,
}
REMAT_POLICIES: dict[str, Callable[..., bool]] = {
    "nothing": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
}
"""Rematerialisation policies by name: what a checkpointed block keeps from its forward pass
for the backward pass. ``"nothing"``: only its input (every intermediate is recomputed);
``"dots"``: also the results of its matrix products and convolutions (the norms,
activations, softmaxes and residual sums are recomputed)."""
REMAT_KINDS = ("transformer", "bottleneck", "head")
"""The kinds of block a model can rematerialise: the Transformer layers of a ViT / Swin / MiT /
Twins backbone, the residual blocks of a ResNet / HRNet backbone, the decode and auxiliary
heads (each as one block)."""
M = TypeVar("M", bound=nn.Module)

GATES: dict[str, Callable[[Array], Array]] = {
    "sigmoid": jax.nn.sigmoid,
    # timm's / PyTorch's hard sigmoid: relu6(x + 3) / 6.
    "hard_sigmoid": jax.nn.hard_sigmoid,
}


def activation(name: str) -> Callable[[Array], Array]:
    """Activation function by name (``relu``, ``hard_swish``, ``silu``, ``gelu``, ``identity``)."""
    check_choice(name, tuple(ACTIVATIONS), "act")
    return ACTIVATIONS[name]


def gate(name: str) -> Callable[[Array], Array]:
    """Gate function by name (``sigmoid`` or ``hard_sigmoid``)."""
    check_choice(name, tuple(GATES), "gate")
    return GATES[name]


def remat(cls: type[M], policy: str | None) -> type[M]:
    """``cls`` itself when ``policy`` is None; otherwise ``cls`` rematerialised (Chen et al.,
    "Training Deep Nets with Sublinear Memory Cost", 2016): the backward pass recomputes what
    the forward pass computed inside the block, keeping only what ``policy``
    (:data:`REMAT_POLICIES`) saves. For a chain of L blocks the activations kept between the
    passes fall from O(L x activations per block) to O(L x block inputs + one block's).

    The class keeps ``cls``'s fields, name and variables (checkpoints and converters are
    unchanged) and its call ``module(*inputs, train=...)``; outputs and gradients equal the
    plain class's up to float rounding (the same dropout draws). ``train`` is static (a Python
    bool) inside the checkpoint, so ``cls.__call__`` must take it as a keyword."""
    if policy is None:
        return cls
    return _rematerialised(cls, policy)


def remat_policy(name: str) -> Callable[..., bool]:
    """The ``jax.checkpoint`` policy :data:`REMAT_POLICIES` names ``name``; ValueError
    naming the choices otherwise."""
    check_choice(name, tuple(REMAT_POLICIES), "remat policy")
    return REMAT_POLICIES[name]


@functools.cache
def _rematerialised(cls: type[M], policy: str) -> type[M]:
    # nn.remat marks positional arguments static; ``train`` moves first for it and back after
    class TrainFirst(cls):  # type: ignore[valid-type,misc]
        def __call__(self, train: bool, *inputs: Any, **kwargs: Any) -> Any:
            return super().__call__(*inputs, train=train, **kwargs)

    checkpointed = nn.remat(TrainFirst, static_argnums=(1,), policy=remat_policy(policy))

    class Rematerialised(checkpointed):  # type: ignore[valid-type,misc]
        def __call__(self, *inputs: Any, train: bool = False, **kwargs: Any) -> Any:
            return super().__call__(train, *inputs, **kwargs)

    Rematerialised.__name__ = Rematerialised.__qualname__ = cls.__name__
    Rematerialised.__doc__ = cls.__doc__
    return Rematerialised


def with_remat(module: M, policy: str | None) -> M:
    """``module`` (unbound) rebuilt as :func:`remat` ``(type(module), policy)`` with the same
    fields; ``module`` itself when ``policy`` is None."""
    if policy is None:
        return module
    fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
              if f.init and f.name not in ("parent", "name")}
    return remat(type(module), policy)(**fields)


def make_divisible(
    value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9
) -> int:
    """Round a width to the nearest multiple of ``divisor`` (timm's rule).

    The result is at least ``min_value`` (default ``divisor``) and, if
    rounding lost more than ``1 - round_limit`` of ``value``, one more
    ``divisor`` is added.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


def reduced_width(
    channels: int, rd_ratio: float, rd_channels: int | None, rd_divisor: int, round_limit: float = 0.0
) -> int:
    """The bottleneck width of a squeeze block: explicit, or ``make_divisible(C * ratio)``."""
    if rd_channels is not None:
        check_positive(rd_channels, "rd_channels")
        return rd_channels
    if rd_ratio <= 0:
        raise ValueError(f"rd_ratio must be > 0; got {rd_ratio!r}")
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=round_limit)


def torch_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Symmetric padding PyTorch reference code uses: ``((s - 1) + d (k - 1)) // 2``."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class ConvParameters(nn.Module):
    """``nn.Conv``'s parameters for the convolutions below: ``kernel (k, k, Cin, features)``
    and, if ``use_bias``, ``bias``, with ``nn.Conv``'s initialisation."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Array] = nn.initializers.zeros

    def parameters(self, x: Array, kernel_size: int) -> tuple[Array, Array, Array | None]:
        """``(x, kernel, bias)`` promoted to ``dtype`` (``bias`` None without ``use_bias``)."""
        kernel = self.param("kernel", self.kernel_init,
                            (kernel_size, kernel_size, x.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        return nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)


class PointwiseConv(ConvParameters):
    """A 1x1, stride-1 convolution computed as a matrix product over the channel axis
    (:func:`attnzoo.ops.pointwise`, as ``ops.conv_implementation`` says).

    Same parameters as ``nn.Conv`` with a 1x1 kernel (``kernel`` ``(1, 1, Cin, Cout)``,
    ``bias``; same initialisation), so checkpoints and converted weights are unchanged. Why:
    XLA:CPU runs the gradient of a 1x1 ``conv_general_dilated`` 4-8x slower than the gradient
    of the equivalent ``dot_general`` (``benchmarks/cpu_profile.py``, docs/benchmarks.md),
    and ResNet bottlenecks are two-thirds 1x1 convolutions.
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x, kernel, bias = self.parameters(x, 1)
        y = ops.pointwise(x, kernel[0, 0])
        return y if bias is None else y + bias


class Conv(ConvParameters):
    """An ungrouped 2-D convolution through :func:`attnzoo.ops.conv2d`, computed as
    ``ops.conv_implementation`` says (by default on CPU with matrix-product gradients for
    kernels of at least 64 x 64 channels, XLA's own elsewhere).

    The same parameters as ``nn.Conv`` (``kernel (k, k, Cin, Cout)``, ``bias``, the same
    initialisation) and the same values: checkpoints and converted weights are unchanged.
    Padding is symmetric, ``padding`` zeros on each side, as PyTorch's ``Conv2d``. Fields past
    ``features`` are best given by keyword (``ConvParameters``' come first).
    """

    kernel_size: int = 3
    stride: int = 1
    dilation: int = 1
    padding: int = 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x, kernel, bias = self.parameters(x, self.kernel_size)
        y = ops.conv2d(x, kernel, stride=self.stride, dilation=self.dilation,
                       padding=self.padding)
        return y if bias is None else y + bias


def conv(
    features: int,
    kernel_size: int = 1,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    padding: int | None = None,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init: Callable[..., Array] = nn.initializers.lecun_normal(),
    name: str | None = None,
) -> nn.Module:
    """A 2-D convolution with PyTorch's symmetric padding and ``nn.Conv``'s parameters (weights
    port 1:1): a 1x1 stride-1 ungrouped unpadded one is a :class:`PointwiseConv`, any other
    ungrouped one a :class:`Conv` (both: faster gradients on CPU), a grouped one ``nn.Conv``."""
    pad = torch_padding(kernel_size, stride, dilation) if padding is None else padding
    if kernel_size == 1 and stride == 1 and groups == 1 and pad == 0:
        return PointwiseConv(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                             kernel_init=kernel_init, name=name)
    if groups == 1:
        return Conv(features, kernel_size=kernel_size, stride=stride, dilation=dilation,
                    padding=pad, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=kernel_init, name=name)
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init,
        name=name,
    )


def batch_norm(
    train: bool,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    scale_init: Callable[..., Array] = nn.initializers.ones,
    axis: int = -1,
    name: str | None = None,
) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults; statistics in float32 under any dtype. ``axis`` is
    the feature axis (the statistics are over all others: ``1`` on ``(B, K, C)`` is
    PyTorch's ``BatchNorm1d(K)``).

    Under ``jax.jit`` with a batch sharded over a mesh axis, the batch mean and
    variance are reductions over the global batch (synchronised BN).
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPS,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=scale_init,
        axis=axis,
        name=name,
    )


class ConvNormAct(nn.Module):
    """Convolution, optional BatchNorm, optional activation.

    Children are named ``conv`` and ``bn`` like timm's ``ConvNormAct`` and
    mmcv's ``ConvModule``, so their state-dict keys map onto it directly. The
    bias defaults to off when a norm follows (both references do the same).
    ``depthwise`` makes the convolution a :class:`DepthwiseConv` (one ``k x k`` filter per
    channel, stride 1: ``features`` must be the input's width), as mmcv's ``ConvModule`` with
    ``groups`` equal to its channels.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    padding: int | None = None
    use_bias: bool | None = None
    norm: bool = True
    act: str | None = "relu"
    depthwise: bool = False
    kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
    bn_scale_init: Callable[..., Array] = nn.initializers.ones
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        use_bias = (not self.norm) if self.use_bias is None else self.use_bias
        if self.depthwise:
            if self.features != x.shape[-1] or self.stride != 1 or self.padding is not None:
                raise ValueError(
                    f"a depthwise ConvNormAct keeps its input's width and size: features "
                    f"({self.features}) must equal the input channels ({x.shape[-1]}), stride 1 "
                    f"and padding None; got stride {self.stride}, padding {self.padding}")
            x = DepthwiseConv(self.kernel_size, dilation=self.dilation, use_bias=use_bias,
                              kernel_init=self.kernel_init, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="conv")(x)
        else:
            x = conv(
                self.features, self.kernel_size, stride=self.stride, dilation=self.dilation,
                groups=self.groups, padding=self.padding, use_bias=use_bias, dtype=self.dtype,
                param_dtype=self.param_dtype, kernel_init=self.kernel_init, name="conv",
            )(x)
        if self.norm:
            x = batch_norm(
                train, dtype=self.dtype, param_dtype=self.param_dtype,
                scale_init=self.bn_scale_init, name="bn",
            )(x)
        if self.act is not None:
            x = activation(self.act)(x)
        return x


def global_avg_pool(x: Array) -> Array:
    """Mean over ``H, W`` keeping them: ``(B, H, W, C) -> (B, 1, 1, C)`` (float32 accumulation)."""
    return jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32).astype(x.dtype)


def zero_gamma(module: nn.Module, dtype: Dtype = jnp.float32) -> Array:
    """The learned residual scale of DANet-style blocks, shape ``(1,)``, initialised to 0.

    At initialisation the block is the identity: "the attention block does
    nothing" until ``gamma`` has been learned, which is intended.
    """
    return module.param("gamma", nn.initializers.zeros, (1,), dtype)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016) on a residual branch, per sample.

    In training each sample's branch is kept with probability ``1 - rate`` and
    scaled by ``1 / (1 - rate)`` (timm's ``DropPath``); identity otherwise.
    Draws from the ``"dropout"`` RNG stream.

    Attributes:
      rate: probability of dropping the branch, in [0, 1); a scalar array where it differs
        between the iterations of a scan over layers (checked by the caller then).
    """

    rate: float | Array = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.rate, (int, float)) and not 0.0 <= self.rate < 1.0:
            raise ValueError(f"rate must be in [0, 1); got {self.rate}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        if not train or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        kept = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(kept, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class DepthwiseConv(nn.Module):
    """A depthwise ``k x k`` convolution (stride 1, ``dilation``, PyTorch's symmetric padding,
    with bias)
    through :func:`attnzoo.ops.depthwise_conv2d` (on CPU by default the sum of ``k^2`` shifted
    per-channel products, where XLA's grouped convolution is 2.5x (forward) to 4x (gradient)
    slower). The same parameters as ``nn.Conv(feature_group_count=C)``: ``kernel (k, k, 1, C)``,
    ``bias``.
    """

    kernel_size: int = 3
    dilation: int = 1
    use_bias: bool = True
    kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, c = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, 1, c), self.param_dtype)
        bias = (self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = ops.depthwise_conv2d(x, kernel, dilation=self.dilation)
        return y if bias is None else y + bias


class SeparableConvNormAct(nn.Module):
    """A depthwise-separable convolution (Chollet, CVPR 2017; DeepLabV3+'s atrous separable
    convolution): a depthwise ``k x k`` conv-BN-ReLU of ``dilation`` then a 1x1 conv-BN-ReLU
    to ``features``, as mmcv's ``DepthwiseSeparableConvModule`` (children ``depthwise_conv``,
    ``pointwise_conv``; its keys map onto them directly).
    """

    features: int
    kernel_size: int = 3
    dilation: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvNormAct(x.shape[-1], self.kernel_size, dilation=self.dilation, depthwise=True,
                        name="depthwise_conv", **kw)(x, train=train)
        return ConvNormAct(self.features, name="pointwise_conv", **kw)(x, train=train)


class PatchConv(nn.Module):
    """A convolution whose kernel equals its stride (non-overlapping ``r x r`` patches, no
    padding; rows and columns past the last whole patch are dropped, as PyTorch's) as one
    product of the patches with the kernel: the same result as the strided convolution,
    with a 6x faster gradient on CPU. Parameters as ``nn.Conv``: ``kernel (r, r, C, O)``,
    ``bias``."""

    features: int
    patch: int
    kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        r, (b, h, w, c) = self.patch, x.shape
        kernel = self.param("kernel", self.kernel_init, (r, r, c, self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        patches = x[:, :h // r * r, :w // r * r].reshape(b, h // r, r, w // r, r, c)
        return jnp.einsum("biyjxc,yxco->bijo", patches, kernel) + bias
