"""Rematerialisation by block kind (``models.create(..., remat=...)``, ``config.model.remat``):
the same outputs, BatchNorm updates and gradients as the plain model, less memory kept for the
backward pass, and clear refusals."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import engine, models
from attnzoo.blocks.common import remat
from attnzoo.blocks.transformer import TransformerEncoderLayer
from attnzoo.heads.fcn import FCNHead
from attnzoo.heads.segformer import SegFormerHead

# narrow CPU-sized models, one per backbone with blocks to rematerialise (every policy and
# kind among them), each with drop path or BatchNorm so that the dropout draws and statistics
# updates are compared too
CASES = {
    "danet_r18_d8": (dict(backbone_kwargs={"width": 8, "stem_width": 8}, head_channels=16,
                          aux_channels=8), {"bottleneck": "nothing", "head": "dots"}),
    "upernet_swin_t": (dict(backbone_kwargs={"embed_dim": 24, "depths": (2, 2, 2, 2),
                                             "window_size": 4}, head_channels=16,
                            aux_channels=8), {"transformer": "dots"}),
    "segmenter_vit_t_mask": (dict(backbone_kwargs={"embed_dim": 48, "depth": 3, "patch_size": 8,
                                                   "img_size": (64, 64), "out_indices": (2,),
                                                   "dropout": 0.1,
                                                   "drop_path_rate": 0.2},
                                  head_kwargs={"num_layers": 1}),
                             {"transformer": "nothing", "head": "nothing"}),
    "segformer_mit_b0": (dict(head_channels=16), {"transformer": "nothing"}),
    "fpn_pcpvt_s": (dict(backbone_kwargs={"embed_dims": (16, 32, 40, 64),
                                          "depths": (1, 1, 2, 1)}, head_channels=16),
                    {"transformer": "dots"}),
    "fcn_hr18s": (dict(backbone_kwargs={"widths": (4, 8, 16, 32), "num_modules": (1, 1, 1, 1),
                                        "num_blocks": (1, 1, 1, 1), "stage1_planes": 8},
                       head_channels=16), {"bottleneck": "dots"}),
}


def _loss(model, params, variables, images):
    out, updates = model.apply({**variables, "params": params}, images, train=True,
                               mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
    return sum(jnp.sum(v.astype(jnp.float32) ** 2) for v in out.values()), (out, updates)


def _largest_difference(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b)),
               default=0.0)


def _largest(a):
    return max((float(jnp.abs(x).max()) for x in jax.tree.leaves(a)), default=0.0)


# compiling two gradients takes 12-46 s a model here: the ViT and the ResNet (bottleneck and
# heads) in the slow set, the others exhaustive
MARKS = {"segmenter_vit_t_mask": (pytest.mark.slow,), "danet_r18_d8": (pytest.mark.slow,)}


@pytest.mark.parametrize("name", [pytest.param(n, marks=MARKS.get(n, (pytest.mark.exhaustive,)))
                                  for n in CASES])
def test_rematerialised_model_equals_the_plain_one(name):
    overrides, policies = CASES[name]
    plain = models.create(name, num_classes=5, **overrides)
    rematted = models.create(name, num_classes=5, remat=policies, **overrides)
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    variables = plain.init(jax.random.key(1), images)
    # the same variables: checkpoints and converters see no difference
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(rematted.init, jax.random.key(1), images))
    grad = jax.jit(jax.grad(_loss, argnums=1, has_aux=True), static_argnums=0)
    g_plain, (out_plain, up_plain) = grad(plain, variables["params"], variables, images)
    g_remat, (out_remat, up_remat) = grad(rematted, variables["params"], variables, images)
    # the recomputed forward is the forward: outputs and statistics to float rounding (XLA
    # fuses the two programs differently), the same dropout and drop-path draws
    assert _largest_difference(out_plain, out_remat) <= 1e-5 * _largest(out_plain)
    assert _largest_difference(up_plain, up_remat) <= 1e-5 * max(_largest(up_plain), 1.0)
    assert _largest_difference(g_plain, g_remat) <= 1e-5 * _largest(g_plain)
    # and the blocks are checkpointed in the differentiated program
    jaxpr = jax.make_jaxpr(lambda p: jax.grad(_loss, argnums=1, has_aux=True)(
        rematted, p, variables, images))(variables["params"])
    assert "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)


MEMORY_SCRIPT = """
import sys
import jax, jax.numpy as jnp, flax.linen as nn
from attnzoo.blocks.common import remat
from attnzoo.blocks.transformer import TransformerEncoderLayer

class Chain(nn.Module):
    cls: type

    @nn.compact
    def __call__(self, x):
        for i in range(8):
            x = self.cls(4, name=f"layers_{i}")(x, train=True)
        return x

x = jax.random.normal(jax.random.key(0), (2, 256, 64))
params = Chain(TransformerEncoderLayer).init(jax.random.key(1), x)
for cls in (TransformerEncoderLayer, *(remat(TransformerEncoderLayer, p) for p in sys.argv[1:])):
    grad = jax.jit(jax.grad(lambda p: jnp.sum(Chain(cls).apply(p, x) ** 2)))
    print(grad.lower(params).compile().memory_analysis().temp_size_in_bytes)
"""


@pytest.mark.slow
def test_remat_keeps_less_for_the_backward_pass():
    """A chain of 8 Transformer layers: the compiled gradient's temporary memory falls (the
    policy's residuals, not every intermediate, live between the passes), the more the less
    the policy saves. XLA:CPU's default
    scheduler orders for concurrency and hoists the recomputation back next to the forward
    pass; with its memory-minimising scheduler (as accelerators schedule under a memory
    limit) the saving shows."""
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=false"}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "dots", "nothing"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    plain, dots, nothing = map(int, out)
    # measured here: 59.8 MB plain, 46.4 MB "dots" (the N x N scores stay), 18.7 MB "nothing"
    assert nothing < dots < 0.9 * plain, (plain, dots, nothing)


def test_remat_refusals():
    with pytest.raises(ValueError, match=r"remat policy must be one of \['nothing', 'dots'\]"):
        remat(TransformerEncoderLayer, "everything")
    with pytest.raises(ValueError, match=r"remat: .* has no 'bottleneck' blocks"):
        models.create("segformer_mit_b0", num_classes=3, remat={"bottleneck": "dots"})
    with pytest.raises(ValueError, match=r"'attention'.*transformer"):
        models.create("segformer_mit_b0", num_classes=3, remat={"attention": "dots"})
    with pytest.raises(ValueError, match=r"does not take|remat"):
        models.create("attention_unet", num_classes=3, remat={"head": "dots"})
    assert remat(TransformerEncoderLayer, None) is TransformerEncoderLayer
    assert remat(TransformerEncoderLayer, "dots") is remat(TransformerEncoderLayer, "dots")


def test_config_fields_reach_the_model():
    c = engine.default_config()
    c.model.name = "segformer_mit_b0"
    c.model.remat.transformer = "dots"
    c.model.remat.head = "nothing"
    model = engine.build_model(c)
    assert model.backbone.remat == "dots"
    assert isinstance(model.head, SegFormerHead) and type(model.head) is not SegFormerHead
    # the auxiliary heads too, each as one block
    danet = models.create("danet_r18_d8", num_classes=3, remat={"head": "dots"})
    assert isinstance(danet.aux_head, FCNHead) and type(danet.aux_head) is not FCNHead
    c.model.remat.head = "all"
    with pytest.raises(ValueError, match=r"config.model.remat.head must be one of"):
        engine.config.check_domains(c)
    # a config saved before the field existed reads as no remat
    saved = engine.default_config().to_dict()
    del saved["model"]["remat"]
    assert engine.config.migrate(saved).model.remat.to_dict() == {
        "transformer": None, "bottleneck": None, "head": None}
    np.testing.assert_equal(engine.build_model(engine.config.migrate(saved)).backbone.remat, None)
