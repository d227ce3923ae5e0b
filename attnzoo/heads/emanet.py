"""EMANet head (Li et al., "Expectation-Maximization Attention Networks for Semantic
Segmentation", ICCV 2019; mmseg's ``EMAHead``)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_positive
from attnzoo.blocks.common import ConvNormAct, Dtype
from attnzoo.heads.base import DecodeHead, Family, register, register_family
from attnzoo.ops.em import normalize

Array = jax.Array


class FrozenPointwise(nn.Module):
    """A 1x1 convolution with bias whose weights are state, not parameters: kept in the
    ``batch_stats`` collection (the variables the optimizer does not train), as mmseg's
    ``ema_mid_conv`` with ``requires_grad = False`` (its random or restored weights stay as
    they are: no gradient, no weight decay)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        kernel = self.variable("batch_stats", "kernel", lambda: nn.initializers.lecun_normal()(
            self.make_rng("params"), (1, 1, c, self.features), jnp.float32))
        bias = self.variable("batch_stats", "bias", lambda: jnp.zeros((self.features,)))
        y = x @ kernel.value[0, 0].astype(self.dtype) + bias.value.astype(self.dtype)
        return jax.lax.stop_gradient(y)


class EMAModule(nn.Module):
    """EM attention with bases kept across images (mmseg's ``EMAModule``): the features are
    reconstructed by :func:`attnzoo.ops.em_attention` from the stored bases ``mu`` (``(C, K)``
    in the ``batch_stats`` collection, initialised as ``K`` unit columns of ``N(0, 2 / K)``
    draws), and in training the bases move towards the batch's final ones:

        mu <- (1 - m) mu + m normalize(mean_b mu_b)

    (no renormalisation after the average, as mmseg). The batch mean runs over the global batch
    under a sharded ``jax.jit`` (like BatchNorm's statistics; mmseg's all-reduce of the
    per-GPU means), so 1 and 8 devices give the same bases.

    Attributes:
      num_bases: ``K``.
      num_stages: the EM iterations ``T``.
      momentum: ``m``.
    """

    num_bases: int = 64
    num_stages: int = 3
    momentum: float = 0.1

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        b, h, w, c = x.shape
        k = self.num_bases
        bases = self.variable("batch_stats", "bases", lambda: normalize(
            jax.random.normal(self.make_rng("params"), (c, k)) * math.sqrt(2.0 / k), axis=0))
        recon, mu = ops.em_attention(x.reshape(b, h * w, c), bases.value, self.num_stages)
        if train and not self.is_initializing():
            bases.value = ((1 - self.momentum) * bases.value
                           + self.momentum * normalize(mu.mean(0), axis=0))
        return recon.reshape(x.shape)


@register("emanet")
class EMAHead(DecodeHead):
    """Expectation-maximisation attention head:

        f = conv3x3(x),   x~ = EMA(W_mid f),   y = relu(f + BN(W_out relu(x~))),

    then a 3x3 conv-BN-ReLU to ``channels`` (``bottleneck``) and, with ``concat_input``, one on
    ``[x, y]`` (``conv_cat``), then the classifier. ``f`` is a 3x3 conv-BN-ReLU to
    ``ema_channels`` (``ema_in_conv``), ``W_mid`` a frozen 1x1 conv with bias mapping its
    non-negative output onto all of ``R`` (``ema_mid_conv``, :class:`FrozenPointwise`),
    ``EMA`` the :class:`EMAModule` (``ema_module``, no gradient through it), ``W_out`` a 1x1
    conv-BN (``ema_out_conv``): the gradient reaches the input through ``f`` alone.

    Attributes:
      ema_channels: the width of the EM attention (default ``channels``; mmseg's configs: 512
        with ``channels`` 256).
      num_bases: the bases ``K`` (64).
      num_stages: the EM iterations ``T`` (3).
      momentum: of the bases' moving average (0.1).
      concat_input: fuse the head's input with its output (``conv_cat``).
    """

    ema_channels: int | None = None
    num_bases: int = 64
    num_stages: int = 3
    momentum: float = 0.1
    concat_input: bool = True

    def __post_init__(self) -> None:
        check_positive(self.num_bases, "num_bases")
        check_positive(self.num_stages, "num_stages")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got {self.momentum}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        self.check_input(x)
        width = self.ema_channels or self.channels
        feats = ConvNormAct(width, 3, name="ema_in_conv", **self.kw)(x, train=train)
        recon = EMAModule(self.num_bases, self.num_stages, self.momentum, name="ema_module")(
            FrozenPointwise(width, dtype=self.dtype, name="ema_mid_conv")(feats), train=train)
        recon = ConvNormAct(width, act=None, name="ema_out_conv", **self.kw)(
            jax.nn.relu(recon), train=train)
        y = self.conv_block(3, "bottleneck")(jax.nn.relu(feats + recon), train=train)
        if self.concat_input:
            y = self.conv_block(3, "conv_cat")(jnp.concatenate([x, y.astype(x.dtype)], -1),
                                                train=train)
        return {"out": self.classifier()(y, train=train)}


register_family(Family(
    name="emanet", head="emanet",
    summary="expectation-maximisation attention: features rebuilt from K EM bases "
            "(Li et al., ICCV 2019)",
    mmseg_renames=((r"^ema_mid_conv\.conv\.", "ema_mid_conv."),),
    mmseg_head_kwargs={"*": {"channels": 256, "ema_channels": 512}}))
