"""The self-attention block of mmseg's context heads (ISANet, ANN, OCRNet)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_image, check_positive
from attnzoo.blocks.common import ConvNormAct, Dtype, conv
from attnzoo.blocks.registry import registered

Array = jax.Array


@registered("self_attention",
            paper="Huang et al. 2019 (ISANet) / Zhu et al. 2019 (ANN) / Yuan et al. 2020 (OCRNet)",
            follows="mmseg `SelfAttentionBlock` (`mmseg/models/utils`) and its ISANet / ANN / "
                    "OCRNet uses",
            tested="equation (numpy; plain, and pooled keys from a second input); "
                   "mmseg forward (ISAHead, ANNHead, OCRHead)")
class SelfAttentionBlock(nn.Module):
    """Single-head attention with convolutional projections, as mmseg's ``SelfAttentionBlock``:
    queries from ``x``, keys and values from ``context`` (``x`` when omitted),

        q = f_q(x),  k = P(f_k(c)),  v = P(f_v(c)),
        y_i = sum_j softmax_j(q_i . k_j / sqrt(d)) v_j,      out = g(f_o(y)),

    where ``f_q``, ``f_k`` are ``key_query_convs`` 1x1 conv-BN-ReLU to ``inter_channels`` (``d``;
    plain 1x1 convs with bias without ``key_query_norm``; one shared module with
    ``share_key_query``), ``f_v`` a 1x1 conv (conv-BN-ReLU with ``value_norm``) to
    ``channels``, or to ``d`` followed by ``f_o`` back to ``channels`` with ``out_project``
    (mmseg's ``with_out``), ``sqrt(d)`` mmseg's ``matmul_norm`` and ``g`` ISANet's 1x1
    conv-BN-ReLU (``output_conv``) or the identity. ``P`` is ANN's pyramid key sampling
    (Zhu et al., "Asymmetric Non-local Neural Networks for Semantic Segmentation", ICCV 2019):
    with ``key_pool_scales`` the projected keys and values are average-pooled into ``s x s``
    bins for each scale ``s`` (PyTorch's adaptive bins) and concatenated, ``sum s^2`` keys
    instead of ``H W``; the identity otherwise. There is no residual: the head adds what it
    needs. Unlike :class:`~attnzoo.blocks.MultiHeadSelfAttention` (one linear projection per
    head), the queries and keys are small conv stacks.

    Submodules ``query_project_<i>``, ``key_project_<i>``, ``value_project``, ``out_project``,
    ``output_conv``: mmseg's ``query_project.<i>``, ... (one conv: no index).

    Attributes:
      channels: the width of ``x`` and of the output.
      inter_channels: the query / key width (default ``channels // 2``).
      context_channels: the width of ``context`` (default ``channels``).
      key_query_convs: the 1x1 layers of each query / key projection.
      key_query_norm: those layers are conv-BN-ReLU (True) or plain convs with bias.
      share_key_query: one projection for the queries and the keys (needs ``context``'s width
        equal to ``channels``).
      value_norm: the value (and out) projections are conv-BN-ReLU, not plain convs.
      out_project: values to ``inter_channels`` then a 1x1 projection back to ``channels``.
      key_pool_scales: ANN's pyramid pooling of the keys and values; None for none.
      output_conv: end with a 1x1 conv-BN-ReLU (ISANet).
      memory_efficient: the exact memory-bounded attention, without the ``N x M`` map.
    """

    channels: int
    inter_channels: int | None = None
    context_channels: int | None = None
    key_query_convs: int = 2
    key_query_norm: bool = True
    share_key_query: bool = False
    value_norm: bool = False
    out_project: bool = False
    key_pool_scales: Sequence[int] | None = None
    output_conv: bool = False
    memory_efficient: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.channels, "channels")
        check_positive(self.key_query_convs, "key_query_convs")
        if self.inter_channels is None and self.channels < 2:
            raise ValueError(f"channels={self.channels} leaves no inter_channels (channels // 2)")
        if self.share_key_query and self.context_channels not in (None, self.channels):
            raise ValueError(f"share_key_query needs context_channels ({self.context_channels}) "
                             f"equal to channels ({self.channels})")
        for scale in self.key_pool_scales or ():
            check_positive(scale, "key_pool_scales")
        super().__post_init__()

    def _projection(self, name: str, width: int, layers: int, norm: bool
                    ) -> Callable[[Array, bool], Array]:
        """``layers`` 1x1 conv-BN-ReLU (``norm``) or convs to ``width``, named ``name[_i]``, as
        one function of ``(x, train)`` (built inside ``__call__``; callable more than once)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        labels = [f"{name}_{i}" if layers > 1 else name for i in range(layers)]
        convs = ([ConvNormAct(width, name=label, **kw) for label in labels] if norm
                 else [conv(width, name=label, **kw) for label in labels])

        def apply(x: Array, train: bool) -> Array:
            for layer in convs:
                x = layer(x, train=train) if norm else layer(x)
            return x

        return apply

    def _pool(self, x: Array) -> Array:
        """``(B, M, C)``: the positions of ``x``, or its pyramid bins (``key_pool_scales``)."""
        if self.key_pool_scales is None:
            return x.reshape(x.shape[0], -1, x.shape[-1])
        return jnp.concatenate(
            [ops.adaptive_avg_pool(x, (s, s)).reshape(x.shape[0], s * s, x.shape[-1])
             for s in self.key_pool_scales], axis=1)

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None, *, train: bool = False) -> Array:
        check_image(x, self.channels)
        if context is None:
            context = x
        else:
            check_image(context, self.context_channels or self.channels, "context",
                        "context_channels")
        inter = self.inter_channels or self.channels // 2
        value_width = inter if self.out_project else self.channels
        key_project = self._projection("key_project", inter, self.key_query_convs,
                                       self.key_query_norm)
        query_project = key_project if self.share_key_query else self._projection(
            "query_project", inter, self.key_query_convs, self.key_query_norm)
        q = query_project(x, train)
        k = key_project(context, train)  # shared: called again, as mmseg (BN updated twice)
        v = self._projection("value_project", value_width, 1, self.value_norm)(context, train)
        b, h, w, _ = x.shape
        y = ops.attend(q.reshape(b, h * w, inter), self._pool(k), self._pool(v),
                       scale=inter ** -0.5, memory_efficient=self.memory_efficient)
        y = y.reshape(b, h, w, value_width)
        if self.out_project:
            y = self._projection("out_project", self.channels, 1, self.value_norm)(y, train)
        if self.output_conv:
            y = ConvNormAct(self.channels, name="output_conv", dtype=self.dtype,
                            param_dtype=self.param_dtype)(y, train=train)
        return y
