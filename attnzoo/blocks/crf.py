"""CRF-as-RNN: the fully connected CRF as a trainable layer (Zheng et al., ICCV 2015)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo import ops
from attnzoo._checks import check_channels, check_floating, check_positive, check_rank
from attnzoo.blocks.common import Dtype
from attnzoo.blocks.registry import register

Array = jax.Array


class DenseCRF(nn.Module):
    """Mean-field inference of the fully connected CRF unrolled as layers (CRF-as-RNN).

    Zheng et al. write each of the ``iterations`` mean-field updates of Krähenbühl & Koltun
    (see :mod:`attnzoo.ops.crf`) as differentiable steps, so the CRF trains end to end after a
    segmentation head:

        Q = softmax(U),    repeat:  U' = U - (w_a . N_a(Q) + w_s . N_s(Q)) mu^T,  Q = softmax(U')

    with ``U`` the head's logits, ``N_a`` / ``N_s`` the normalised appearance (position +
    colour) and smoothness (position) Gaussian filters, learnable per-class kernel weights
    ``w_a``, ``w_s`` (``(L,)``, the diagonal weight matrices of the reference code) and a
    learnable compatibility ``mu`` ``(L, L)`` initialised to Potts ``[l != l']``. The defaults
    are CRF-as-RNN's: ``theta_alpha = 160, theta_beta = 3, theta_gamma = 3``, initial weights
    5 (appearance) and 3 (smoothness), 5 iterations in training, messages normalised by the
    kernels' row sums (``normalization="row"``). ``learn_bandwidths`` makes the three bandwidths
    parameters too (stored as logs, so they stay positive).

    ``__call__(logits, image)``: ``logits`` ``(B, H, W, num_classes)``, ``image``
    ``(B, H, W, 3)`` RGB in 0-255; returns refined logits of the same shape in ``dtype`` (the
    mean-field updates run in float32 whatever ``dtype``; parameters in ``param_dtype``). It takes
    ``train`` as every block does, and ignores it: nothing in it (no dropout, no normalisation
    statistics) behaves differently in training.
    """

    num_classes: int
    iterations: int = 5
    theta_alpha: float = 160.0
    theta_beta: float = 3.0
    theta_gamma: float = 3.0
    w_appearance: float = 5.0
    w_smoothness: float = 3.0
    learn_bandwidths: bool = False
    method: str = "lattice"
    normalization: str = "row"
    chunk_size: int = 1024
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, logits: Array, image: Array, *, train: bool = False) -> Array:
        check_positive(self.num_classes, "num_classes")
        check_rank(logits, 4, "logits", "B, H, W, num_classes")
        check_floating(logits, "logits")
        check_channels(logits, self.num_classes, "logits", "num_classes")
        thetas = (self.theta_alpha, self.theta_beta, self.theta_gamma)
        for value, name in zip(thetas, ("theta_alpha", "theta_beta", "theta_gamma")):
            if not value > 0:
                raise ValueError(f"{name} must be positive; got {value!r}")
        num = self.num_classes
        w_a = self.param("appearance_weight", nn.initializers.constant(self.w_appearance), (num,),
                         self.param_dtype)
        w_s = self.param("smoothness_weight", nn.initializers.constant(self.w_smoothness), (num,),
                         self.param_dtype)
        mu = self.param("compatibility",
                        lambda _key, shape, dtype: ops.potts(shape[0]).astype(dtype), (num, num),
                        self.param_dtype)
        if self.learn_bandwidths:
            log_theta = self.param("log_bandwidths",
                                   lambda _key: jnp.log(jnp.asarray(thetas, self.param_dtype)))
            thetas = tuple(jnp.exp(log_theta))
        refined = ops.dense_crf(logits, image, iterations=self.iterations, w_appearance=w_a,
                                w_smoothness=w_s, theta_alpha=thetas[0], theta_beta=thetas[1],
                                theta_gamma=thetas[2], compatibility=mu, method=self.method,
                                normalization=self.normalization, chunk_size=self.chunk_size)
        return refined.astype(self.dtype)


def _crf_example(module: DenseCRF, size: tuple[int, int] = (8, 8)) -> tuple[Array, Array]:
    return (jnp.zeros((1, *size, module.num_classes), jnp.float32),
            jnp.zeros((1, *size, 3), jnp.float32))


register("crf", DenseCRF, paper="Zheng et al. 2015 (CRF-as-RNN)",
         follows="CRF-as-RNN's parameters",
         tested="pixel-loop mean field; densecrf (pydensecrf2); finite differences",
         example=_crf_example, size_field="num_classes")
