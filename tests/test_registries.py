"""Every registered block, head, backbone and model through the same checks, enumerated from
the registries (``list_blocks()``, ``list_heads()``, ``list_backbones()``, ``list_models()``):
a new entry is tested by registering it. The checks: it runs under ``jax.jit``, in float32
and bfloat16, at odd sizes, with the output shapes it promises, and refuses bad input with an
error naming it. Blocks run; heads, backbones and models (up to ResNet-152 and MiT-B5) are
traced (``jax.eval_shape``): they run in the parity tests (timm, mmseg, Hugging Face) and the
models' tests. Every model's training path is traced (the ResNet-50 / -101, output-stride-16,
HRNet-W18 / -W48 and Swin-S / B / L ones in the slow set), its inference path once per family
and backbone kind
(``INFERENCE_TRACED``).

Where an entry is built or called otherwise than the common way, it is named in the tables
below, with the reason: nothing else is special-cased.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import backbones, blocks, heads, models
from helpers import build_block

CHANNELS = 32
ODD = (7, 11)  # an odd map (blocks, head features)
ODD_IMAGE = (33, 35)  # an odd image (backbones, models): 33 = 32 + 1 at the largest stride

# block -> how it is built instead of ``channels=CHANNELS``
BLOCK_KWARGS = {
    # CRF-as-RNN refines logits: sized by its classes, not channels; the exact (dense) filter,
    # 2 iterations: the permutohedral lattice compiles for ~12 s, and tests/test_crf.py runs it
    # jitted, with finite-difference gradients
    "crf": {"num_classes": 4, "method": "dense", "iterations": 2},
}
# head -> fields beside ``num_classes`` and ``channels``
HEAD_KWARGS = {
    "psanet": {"mask_size": (13, 21)},  # 2h - 1 of the features covers them (97 x 97 default)
    "segmenter_mask": {"num_heads": 2},  # 16 channels: ViT-B's 12 heads do not divide them
    # SETR's decoders upsample the features themselves: here by 1, so that the logits are at
    # the features' size as the other heads'; 4 levels of 4 make the MLA head's 16 channels
    "setr_up": {"up_scale": 1},
    "setr_mla": {"up_scale": 1, "mla_channels": 4},
    "cup": {"decoder_channels": (16, 8, 8)},  # a block per skip: no upsampling past the finest
    # GroupNorm's 32 groups need 32 channels; a few queries and layers
    "mask2former": {"channels": 32, "num_heads": 2, "num_queries": 6, "num_decoder_layers": 2,
                    "num_encoder_layers": 1},
    "maskformer": {"channels": 32, "num_heads": 2, "num_queries": 6, "num_decoder_layers": 2},
}


def first_array(args):
    """The input whose shape the block's output has (``multiscale`` takes a list of maps)."""
    return args[0][0] if isinstance(args[0], list) else args[0]


@functools.cache  # built once for the checks that share a size (none changes what it gets)
def build(name, size=(8, 8)):
    return build_block(name, size, **BLOCK_KWARGS.get(name, {"channels": CHANNELS}))


@pytest.mark.parametrize("name", blocks.list_blocks())
def test_block_runs_jitted_with_its_input_shape_and_finite_gradients(name):
    module, args, variables = build(name)
    out = jax.jit(module.apply)(variables, *args)
    assert out.shape == first_array(args).shape and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()

    def loss(params, args):
        y, _ = module.apply({**variables, "params": params}, *args, train=True,
                            mutable=["batch_stats", "intermediates"])
        return jnp.mean(y ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], args)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads[0]))


@pytest.mark.parametrize("name", blocks.list_blocks())
def test_block_in_bfloat16_at_an_odd_size_follows_float32(name):
    """``dtype=bfloat16`` on bfloat16 input (as inside a bfloat16 model; float32 parameters) of
    an odd size: the input's shape, bfloat16, within 10% of the float32 block's largest
    output."""
    module32, args, variables = build(name, ODD)
    module16 = module32.clone(dtype=jnp.bfloat16)
    out32 = np.asarray(jax.jit(module32.apply)(variables, *args))
    out16 = jax.jit(module16.apply)(variables, *jax.tree.map(lambda a: a.astype(jnp.bfloat16),
                                                               args))
    assert out16.shape == first_array(args).shape and out16.dtype == jnp.bfloat16
    out16 = np.asarray(out16, np.float32)
    assert np.isfinite(out16).all()
    err = np.abs(out16 - out32).max()
    assert err <= 0.1 * np.abs(out32).max() + 1e-2, f"bf16 drifted by {err}"


@pytest.mark.parametrize("name", blocks.list_blocks())
def test_block_refuses_a_wrong_rank_width_and_dtype_by_name(name):
    module, args, variables = build(name)
    first = first_array(args)

    def call(x):
        new = ([x, *args[0][1:]],) if isinstance(args[0], list) else (x, *args[1:])
        return module.apply(variables, *new)

    with pytest.raises(ValueError, match="channels|num_classes"):
        call(jnp.zeros(first.shape[:-1] + (first.shape[-1] + 1,)))
    with pytest.raises(ValueError, match="rank"):
        call(jnp.zeros(first.shape[1:]))
    with pytest.raises(ValueError, match="must be a floating-point array"):
        call(jnp.ones(first.shape, jnp.int32))  # not computed in integers and truncated


def head_strides(name):
    """The relative strides of the backbone features head ``name`` reads in a model using it
    (a D8 one where there is one; ``in_feature``; 1 for the finest): ``[1]`` for one feature map, ``[1, 2, 4, 8]``
    for MiT's four stages, ``[1, 1]`` for ANN's c3 and c4 of a dilated ResNet."""
    using = [m for m in models.list_models() if getattr(models.get_spec(m), "head", None) == name]
    using.sort(key=lambda m: not m.endswith("_d8"))  # a D8 model's, as mmseg's configs
    spec = models.get_spec(using[0]) if using else None
    if spec is None or isinstance(spec.in_feature, str):
        return [1]
    stride = {} if spec.output_stride is None else {"output_stride": spec.output_stride}
    info = backbones.create(spec.backbone, **stride).feature_info()
    strides = [info[k][1] for k in spec.in_feature]
    return [s // min(strides) for s in strides]


def head_input(name, size, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    strides = head_strides(name)
    if strides == [1]:
        return jnp.asarray(rng.standard_normal((2, *size, 24)), dtype)
    return [jnp.asarray(rng.standard_normal((2, math.ceil(size[0] / s), math.ceil(size[1] / s),
                                             8 * 2 ** i)), dtype)
            for i, s in enumerate(strides)]


@pytest.mark.parametrize("name", heads.list_heads())
def test_head_traces_jitted_in_bfloat16_at_an_odd_size_with_its_declared_outputs(name):
    """Traced, not run: every head runs in the mmseg parity tests (test_mmseg.py) and the
    models' tests."""
    head = heads.create(name, **{"num_classes": 5, "channels": 16, "dtype": jnp.bfloat16,
                                 **HEAD_KWARGS.get(name, {})})
    x = head_input(name, ODD, jnp.bfloat16)
    trained, variables = jax.eval_shape(lambda x: head.init_with_output(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=True), x)
    out = jax.eval_shape(jax.jit(head.apply), variables, x)
    assert list(out) == ["out"]
    assert out["out"].shape == (2, *ODD, 5) and out["out"].dtype == jnp.bfloat16
    if getattr(type(head), "set_prediction", False):  # the query heads' prediction sets
        sets = trained.pop("sets")
        assert sets["classes"].shape[-1] == 6 and sets["masks"].shape[-1] == 6  # the queries
    assert sorted(trained) == sorted(["out", *(k for k, _ in type(head).branches)])
    image_level = type(head).branch_losses  # EncNet's "se": one logit per class and image
    assert all(v.shape == ((2, 5) if k in image_level else (2, *ODD, 5))
               for k, v in trained.items())
    wrong = x[0] if isinstance(x, jax.Array) else [x[0][0], *x[1:]]
    with pytest.raises(ValueError, match="rank"):
        head.init(jax.random.key(0), wrong)


# the HRNets wider than W18, the Swins larger than Swin-T, the ViTs larger than ViT-S and the
# Twins larger than S differ from them in their widths, depths and windows only: traced in the
# slow set
BACKBONES = [pytest.param(n, marks=pytest.mark.slow)
             if re.fullmatch(r"hrnet_w(?!18)\d+|swin_[sbl](_w12)?|vit_[bl]16|(pcpvt|svt)_[bl]", n)
             else n
             for n in backbones.list_backbones()]


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_traces_jitted_in_bfloat16_at_an_odd_size_with_its_feature_info(name):
    module = backbones.create(name, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, *ODD_IMAGE, module.in_channels), jnp.float32)
    out, _ = jax.eval_shape(jax.jit(lambda x: module.init_with_output(jax.random.key(0), x)), x)
    info = module.feature_info()
    assert list(out) == list(info) == ["c1", "c2", "c3", "c4"]
    for level, (channels, stride) in info.items():
        size = tuple(math.ceil(n / stride) for n in ODD_IMAGE)
        assert out[level].shape == (2, *size, channels), level
        assert out[level].dtype == jnp.bfloat16, level
    with pytest.raises(ValueError, match="in_channels"):
        module.init(jax.random.key(0), jnp.zeros((1, 32, 32, module.in_channels + 1)))
    with pytest.raises(ValueError, match="rank 4"):
        module.init(jax.random.key(0), jnp.zeros((32, 32, module.in_channels)))


def _first_model_of_each_kind():
    """One model per (family, backbone kind), the shortest name (the smallest): the rest differ
    from it in depth or output stride only, which the backbones' own check covers."""
    firsts = {}
    for name in sorted(models.list_models(), key=len):
        spec = models.get_spec(name)
        kind = (getattr(spec, "family", None), type(spec).__name__,
                getattr(spec, "backbone", "").rstrip("0123456789_vbcde"))
        firsts.setdefault(kind, name)
    return set(firsts.values())


# models whose inference (eval-mode) path is traced too; every model's training path is: the
# ResNet-50 / -101, output-stride-16, HRNet-W18 / -W48, Swin-S / B / L, ViT-B / L and Twins-B / L
# ones and the DeiT-S with a final norm in the slow set (they differ from the R-18 / HRNet-W18-small / Swin-T
# / DeiT-S model of their family in the backbone's depth, width, window, dilations or final
# norm only, which the backbones' own check covers)
INFERENCE_TRACED = _first_model_of_each_kind()
_SLOW_MODEL = re.compile(r".*(_r(50|101)(_d8)?|_d16|_hr(18|48)|_swin_[sbl](_w12)?"
                         r"|_(vit|deit)_b16(_ln)?(_mln)?|_deit_s16_ln_mln|_(pcpvt|svt)_[bl]"
                         r"|_vit_[bl]_\w+)")
MODELS = [pytest.param(n, marks=pytest.mark.slow) if _SLOW_MODEL.fullmatch(n) else n
          for n in models.list_models()]


@pytest.mark.parametrize("name", MODELS)
def test_model_traces_jitted_in_bfloat16_at_an_odd_size_with_its_loss_outputs(name):
    model = models.create(name, num_classes=5, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, *ODD_IMAGE, 3), jnp.float32)
    trained, variables = jax.eval_shape(jax.jit(lambda x: model.init_with_output(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=True)), x)
    if name in INFERENCE_TRACED:
        out = jax.eval_shape(jax.jit(model.apply), variables, x)
        assert list(out) == ["out"]
        assert out["out"].shape == (2, *ODD_IMAGE, 5) and out["out"].dtype == jnp.bfloat16
    assert trained["out"].dtype == jnp.bfloat16
    if getattr(getattr(model, "head", None), "set_prediction", False):  # Mask2Former's sets
        assert [t["output"] for t in model.loss_terms()] == ["sets"]
        sets = trained.pop("sets")
        layers, queries = model.head.num_decoder_layers, model.head.num_queries
        layers += isinstance(model.head, heads.Mask2FormerHead)  # a set before the first layer
        assert sets["classes"].shape == (2, layers, queries, 6)
        assert sets["masks"].shape == (2, layers, *(math.ceil(n / 4) for n in ODD_IMAGE),
                                       queries)
        assert list(trained) == ["out"]
    else:
        assert sorted(trained) == sorted(t["output"] for t in model.loss_terms())
    image_level = getattr(getattr(model, "head", None), "branch_losses", {})  # EncNet's "se"
    assert all(v.shape == ((2, 5) if k in image_level else (2, *ODD_IMAGE, 5))
               for k, v in trained.items())
    with pytest.raises(ValueError, match="images has 1 channels"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="images must have rank 4"):
        model.init(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_every_family_has_its_head_models_and_model_sets():
    for name in heads.list_families():
        family = heads.get_family(name)
        assert family.head in heads.list_heads()
        for model_set in family.model_sets:
            names = models.zoo.MODEL_SETS[model_set](family)
            assert set(names) <= set(models.list_models())
            assert all(models.get_spec(n).family == name for n in names)
