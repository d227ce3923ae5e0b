"""Non-local blocks: the non-local block and its disentangled form (DNLNet)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_choice, check_image, check_positive
from attnzoo.blocks.common import ConvNormAct, Dtype, conv
from attnzoo.blocks.registry import registered

Array = jax.Array

MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")


def _max_pool2(x: Array) -> Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class ConcatProjection(nn.Module):
    """mmcv's ``concat_project``: a 1x1 conv (no bias) of ``[theta_i; phi_j]`` to one logit.

    Being linear, it is applied to ``theta`` and ``phi`` separately (the two
    halves of its kernel); the ReLU follows inside the op.
    """

    inter_channels: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, theta: Array, phi: Array) -> tuple[Array, Array]:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (1, 1, 2 * self.inter_channels, 1),
            self.param_dtype,
        )
        w = kernel.reshape(2, self.inter_channels).astype(theta.dtype)
        return theta @ w[0], phi @ w[1]


@registered("non_local", paper="Wang et al. 2018",
            follows="mmcv `NonLocal2d` (4 modes)",
            tested="mmcv forward, written in the tests",
            torch_renames={"concat_project.conv": "concat_project", "g.0": "g",
                           "phi.0": "phi"})
class NonLocal2d(nn.Module):
    """Non-local block.

    Wang et al., "Non-local Neural Networks", CVPR 2018, eq. (1) and (6):

        y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j),    z_i = W_z y_i + x_i,

    ``f`` by ``mode`` (see :func:`attnzoo.ops.non_local_attention`).
    Matches mmcv's ``NonLocal2d``: inter width ``max(C // reduction, 1)``,
    embedded Gaussian scaled by ``1/sqrt(inter)`` (``use_scale``), 1x1
    projections ``g``, ``theta``, ``phi`` initialised N(0, 0.01), ``conv_out``
    (optionally followed by BN) zero-initialised so the block starts as the
    identity, optional 2x2 max-pool ``sub_sample`` of ``g`` and ``phi``.
    ``memory_efficient`` computes the same output without the ``N x N`` map.
    """

    channels: int
    reduction: int = 2
    use_scale: bool = True
    mode: str = "embedded_gaussian"
    sub_sample: bool = False
    norm: bool = False
    memory_efficient: bool = False
    query_chunk_size: int = 1024
    key_chunk_size: int = 4096
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.reduction, "reduction")
        check_choice(self.mode, MODES, "mode")
        super().__post_init__()

    @property
    def kw(self) -> dict[str, Dtype]:
        """``dtype`` and ``param_dtype`` for submodules."""
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def attend(self, x: Array, theta: Array, phi: Array, g: Array) -> Array:
        """``y = sum_j f(theta_i, phi_j) g_j`` of ``mode`` (called inside ``__call__``)."""
        chunks = dict(memory_efficient=self.memory_efficient, query_chunk_size=self.query_chunk_size)
        if self.mode == "concatenation":
            a, b = ConcatProjection(theta.shape[-1], self.param_dtype, name="concat_project")(
                theta, phi)
            return ops.non_local_concatenation(a, b, g, **chunks)
        return ops.non_local_attention(theta, phi, g, mode=self.mode, use_scale=self.use_scale,
                                       key_chunk_size=self.key_chunk_size, **chunks)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        inter = max(self.channels // self.reduction, 1)
        proj = dict(norm=False, act=None, use_bias=True, kernel_init=nn.initializers.normal(0.01),
                    **self.kw)
        pool = _max_pool2 if self.sub_sample else (lambda t: t)
        g = pool(ConvNormAct(inter, name="g", **proj)(x))
        if self.mode == "gaussian":
            theta, phi = x, pool(x)
        else:
            theta = ConvNormAct(inter, name="theta", **proj)(x)
            phi = pool(ConvNormAct(inter, name="phi", **proj)(x))
        out = ConvNormAct(
            self.channels, norm=self.norm, act=None,
            kernel_init=nn.initializers.zeros if not self.norm else nn.initializers.lecun_normal(),
            bn_scale_init=nn.initializers.zeros, name="conv_out", **self.kw,
        )(self.attend(x, theta, phi, g), train=train)
        return x + out


@registered("dnl", paper="Yin et al. 2020 (DNLNet)",
            follows="mmseg `DisentangledNonLocal2d`",
            tested="equation (numpy, op); mmseg forward (DNLHead)")
class DisentangledNonLocal2d(NonLocal2d):
    """Disentangled non-local block.

    Yin et al., "Disentangled Non-Local Neural Networks", ECCV 2020: the non-local block's
    attention split into a whitened pairwise term and a unary term,

        y_i = sum_j softmax_j((theta_i - mu_theta) . (phi_j - mu_phi) / (sqrt(d) T)) g_j
              + sum_j softmax_j(m_j) g_j,        z_i = W_z y_i + x_i,

    (:func:`attnzoo.ops.disentangled_non_local_attention`), as mmseg's
    ``DisentangledNonLocal2d``: :class:`NonLocal2d` in its embedded-Gaussian mode without
    sub-sampling (its ``g``, ``theta``, ``phi``, ``conv_out``), with ``conv_mask``, a 1x1 conv
    with bias to the unary logit ``m``, and the temperature ``T``.
    """

    temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.mode != "embedded_gaussian" or self.sub_sample:
            raise ValueError(f"the disentangled block is embedded-Gaussian without sub-sampling; "
                             f"got mode={self.mode!r}, sub_sample={self.sub_sample}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive; got {self.temperature!r}")
        super().__post_init__()

    def attend(self, x: Array, theta: Array, phi: Array, g: Array) -> Array:
        mask = conv(1, name="conv_mask", **self.kw)(x)
        return ops.disentangled_non_local_attention(
            theta, phi, g, mask[..., 0], temperature=self.temperature, use_scale=self.use_scale,
            memory_efficient=self.memory_efficient, query_chunk_size=self.query_chunk_size,
            key_chunk_size=self.key_chunk_size)
