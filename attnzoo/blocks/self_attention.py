"""The self-attention block of mmseg's context heads (ISANet, OCRNet, ANN)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import ConvNormAct, Dtype, conv
from attnzoo.blocks.registry import registered

Array = jax.Array


@registered("self_attention", paper="Yuan et al. 2019 (OCRNet) / Huang et al. 2019 (ISANet)",
            follows="mmseg `SelfAttentionBlock` (ISANet's)",
            tested="equation (numpy); mmseg forward (ISAHead)")
class SelfAttentionBlock(nn.Module):
    """Single-head self-attention with convolutional projections, as mmseg's
    ``SelfAttentionBlock`` (``mmseg/models/utils``) in ISANet's configuration:

        q = f_q(x),  k = f_k(x),  v = W_v x,
        y_i = sum_j softmax_j(q_i . k_j / sqrt(d)) v_j,      out = g(y),

    where ``f_q``, ``f_k`` are ``key_query_convs`` 1x1 conv-BN-ReLU to ``inter_channels`` (``d``;
    plain 1x1 convs with bias without ``key_query_norm``), ``W_v`` a 1x1 conv with bias back to
    ``channels``, ``sqrt(d)`` mmseg's ``matmul_norm``, and ``g`` a 1x1 conv-BN-ReLU
    (``output_project``, ISANet's addition) or the identity. There is no residual: the head
    adds what it needs. Unlike :class:`~attnzoo.blocks.MultiHeadSelfAttention` (one linear
    projection per head), the queries and keys are small conv stacks.

    Submodules ``query_project_<i>``, ``key_project_<i>``, ``value_project``,
    ``output_project``: mmseg's ``query_project.<i>``, ... (one conv: no index).

    Attributes:
      channels: input and output width.
      inter_channels: the query / key width (default ``channels // 2``).
      key_query_convs: the 1x1 layers of each query / key projection.
      key_query_norm: conv-BN-ReLU layers (True) or plain convs with bias.
      output_project: end with a 1x1 conv-BN-ReLU.
      memory_efficient: the exact memory-bounded attention, without the ``N x N`` map.
    """

    channels: int
    inter_channels: int | None = None
    key_query_convs: int = 2
    key_query_norm: bool = True
    output_project: bool = True
    memory_efficient: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.key_query_convs, "key_query_convs")
        if self.inter_channels is None and self.channels < 2:
            raise ValueError(f"channels={self.channels} leaves no inter_channels (channels // 2)")
        super().__post_init__()

    def _project(self, x: Array, name: str, width: int, train: bool) -> Array:
        """The query or key projection (called inside ``__call__``)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(self.key_query_convs):
            label = f"{name}_{i}" if self.key_query_convs > 1 else name
            x = (ConvNormAct(width, name=label, **kw)(x, train=train) if self.key_query_norm
                 else conv(width, name=label, **kw)(x))
        return x

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        inter = self.inter_channels or self.channels // 2
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = self._project(x, "query_project", inter, train)
        k = self._project(x, "key_project", inter, train)
        v = conv(self.channels, name="value_project", **kw)(x)
        b, h, w, _ = x.shape
        y = ops.attend(q.reshape(b, h * w, inter), k.reshape(b, h * w, inter),
                       v.reshape(b, h * w, self.channels), scale=inter ** -0.5,
                       memory_efficient=self.memory_efficient).reshape(x.shape)
        if self.output_project:
            y = ConvNormAct(self.channels, name="output_project", **kw)(y, train=train)
        return y
