"""Transformer layers over token sequences ``(B, N, C)``: the encoder layer of ViT (Dosovitskiy
et al., ICLR 2021) as mmsegmentation's ``TransformerEncoderLayer`` builds it, which its ViT
backbone and Segmenter's mask transformer share, and the MLP Swin uses too.

Not registered as blocks: they read token sequences (a class token, class embeddings), not
``(B, H, W, C)`` maps.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_divisible, check_positive, check_rank
from attnzoo.blocks.common import DropPath, Dtype

Array = jax.Array

LAYER_RENAMES = ((r"attn\.attn\.out_proj\.", "attn.proj."),
                 (r"attn\.attn\.(query|key|value)\.", r"attn.\1."),
                 (r"ffn\.layers\.0\.0\.", "mlp.fc1."),
                 (r"ffn\.layers\.1\.", "mlp.fc2."))
"""mmseg's ``TransformerEncoderLayer`` keys inside a layer (after its ``nn.MultiheadAttention``
``in_proj`` is split in ``query`` / ``key`` / ``value``) as :class:`TransformerEncoderLayer`'s:
``(pattern, replacement)`` pairs for the part after the layer's own prefix."""


def layer_renames(prefix: str) -> tuple[tuple[str, str], ...]:
    r""":data:`LAYER_RENAMES` for the layers whose keys start with regex ``prefix`` (e.g.
    ``r"backbone\.layers\.\d+\."``): anchored patterns keeping the prefix."""
    return tuple((f"^({prefix})" + pattern, r"\1" + replacement.replace("\\1", "\\2"))
                 for pattern, replacement in LAYER_RENAMES)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` (exact GELU, PyTorch's), ``hidden`` wide: the Transformer MLP.

    Attributes:
      hidden: width of ``fc1``'s output.
      dropout: dropout after the activation and after ``fc2`` (mmcv's ``FFN``'s ``ffn_drop``).
    """

    hidden: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = jax.nn.gelu(nn.Dense(self.hidden, name="fc1", **kw)(x), approximate=False)
        y = nn.Dropout(self.dropout)(y, deterministic=not train)
        y = nn.Dense(x.shape[-1], name="fc2", **kw)(y)
        return nn.Dropout(self.dropout)(y, deterministic=not train)


class TokenSelfAttention(nn.Module):
    """Multi-head self-attention over tokens (Vaswani et al., NeurIPS 2017, eq. (1) and the
    multi-head form):

        head_h = softmax(Q_h K_h^T / sqrt(d)) V_h,   y = W_o [head_1; ...; head_H],

    ``Q, K, V`` linear maps of the ``(B, N, C)`` input, ``d = C / H``. Submodules ``query``,
    ``key``, ``value``, ``proj`` (PyTorch's ``nn.MultiheadAttention`` ``in_proj`` split in
    three, and its ``out_proj``). ``memory_efficient`` computes the same attention without
    the ``N x N`` map (:func:`attnzoo.ops.attend`).

    Attributes:
      num_heads: ``H`` (``C`` must divide by it).
      qkv_bias: biases on ``query``, ``key``, ``value``.
      dropout: dropout on the output (mmcv's ``proj_drop``).
      memory_efficient: chunked exact attention.
    """

    num_heads: int
    qkv_bias: bool = True
    dropout: float = 0.0
    memory_efficient: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_rank(x, 3, "x", "B, N, C")
        b, n, c = x.shape
        check_divisible(c, self.num_heads, "x's channels", "num_heads")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def split(t: Array) -> Array:  # (B, N, C) -> (B, heads, N, d)
            return jnp.moveaxis(t.reshape(b, n, self.num_heads, c // self.num_heads), 2, 1)

        q, k, v = (split(nn.Dense(c, use_bias=self.qkv_bias, name=name, **kw)(x))
                   for name in ("query", "key", "value"))
        out = ops.attend(q, k, v, memory_efficient=self.memory_efficient)
        out = nn.Dense(c, name="proj", **kw)(jnp.moveaxis(out, 1, 2).reshape(b, n, c))
        return nn.Dropout(self.dropout)(out, deterministic=not train)


class TransformerEncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer on ``(B, N, C)`` tokens:

        z' = z + MSA(LN(z)),   z'' = z' + DropPath(MLP(LN(z')))

    as mmsegmentation's ``TransformerEncoderLayer`` (its stochastic depth is on the MLP branch
    only; timm's ViT drops both). Submodules ``ln1``, ``attn``
    (:class:`TokenSelfAttention`), ``ln2``, ``mlp`` (:class:`Mlp`).

    Attributes:
      num_heads: attention heads.
      mlp_ratio: the MLP's width over ``C``.
      qkv_bias: biases on the query, key and value maps.
      dropout: dropout after the attention's projection and in the MLP (mmseg's ``drop_rate``).
      drop_path: stochastic depth rate of the MLP branch (the call's ``drop_path`` overrides
        it: a scan over layers passes each layer's rate).
      ln_eps: the LayerNorms' epsilon (1e-6 in mmseg's ViT configs).
      memory_efficient: chunked exact attention.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    dropout: float = 0.0
    drop_path: float = 0.0
    ln_eps: float = 1e-6
    memory_efficient: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_positive(self.num_heads, "num_heads")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, drop_path: Array | None = None
                 ) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = nn.LayerNorm(self.ln_eps, name="ln1", **kw)(x)
        x = x + TokenSelfAttention(self.num_heads, self.qkv_bias, self.dropout,
                                   self.memory_efficient, name="attn", **kw)(y, train=train)
        y = nn.LayerNorm(self.ln_eps, name="ln2", **kw)(x)
        y = Mlp(int(x.shape[-1] * self.mlp_ratio), self.dropout, name="mlp", **kw)(y, train=train)
        rate = self.drop_path if drop_path is None else drop_path
        return x + DropPath(rate)(y, train=train)


class ScannedEncoderLayer(TransformerEncoderLayer):
    """:class:`TransformerEncoderLayer` as the body of ``nn.scan`` over identical layers:
    ``(tokens, drop_path rate) -> (tokens, tokens)``, the carry and each layer's output, with
    ``training`` a field (a scan's body takes no static call arguments). Its parameters are
    the layer's (stacked along the scan's axis)."""

    training: bool = False

    def __call__(self, x: Array, drop_path: Array) -> tuple[Array, Array]:
        y = super().__call__(x, train=self.training, drop_path=drop_path)
        return y, y
