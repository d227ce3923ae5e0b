"""The recipes in ``configs/``: mmseg.py builds every registered model's recipe, the quickstart
every family's; the argument parser."""

import jax
import jax.numpy as jnp
import pytest
from helpers import load_config
from ml_collections import ConfigDict

from attnzoo import engine, heads, models


@pytest.mark.parametrize("spec,name,crop,steps", [
    ("mmseg.py", "danet_r50_d8", (512, 1024), 80_000),
    ("mmseg.py:danet_r101_d8,cityscapes769", "danet_r101_d8", (769, 769), 80_000),
    ("mmseg.py:ccnet_r50_d16,ade20k", "ccnet_r50_d16", (512, 512), 160_000),
    ("mmseg.py:model=polarized_r101_d8", "polarized_r101_d8", (512, 1024), 80_000),
    ("mmseg.py:attention_unet_small,ade20k", "attention_unet_small", (512, 512), 160_000),
    ("mmseg.py:segformer_mit_b0,ade20k", "segformer_mit_b0", (512, 512), 160_000),
    ("mmseg.py:segformer_mit_b5,cityscapes1024", "segformer_mit_b5", (1024, 1024), 160_000),
    ("mmseg.py:upernet_swin_t,ade20k", "upernet_swin_t", (512, 512), 160_000),
    ("mmseg.py:upernet_deit_s16_ln_mln,ade20k", "upernet_deit_s16_ln_mln", (512, 512), 160_000),
    ("quickstart.py", "danet_r18_d8", (128, 128), 1000),
    ("quickstart.py:ccnet", "ccnet_r18_d8", (128, 128), 1000),
    ("quickstart.py:psanet", "psanet_r18_d8", (128, 128), 1000),
    ("quickstart.py:segformer", "segformer_mit_b0", (128, 128), 1000),
])
def test_shipped_configs_build_their_model(spec, name, crop, steps):
    config = load_config(spec)
    assert config.model.name == name
    assert tuple(config.dataset.crop_size) == crop and config.num_steps == steps
    if "segformer" in spec and spec.startswith("mmseg"):
        assert config.optimizer.name == "adamw" and config.optimizer.learning_rate == 6e-5
        assert config.optimizer.warmup_steps == 1500 and config.optimizer.power == 1.0
        assert dict(config.optimizer.lr_mult) == {"head": 10.0} and config.eval_batch_size == 1
    elif "swin" in spec or "deit" in spec:  # mmseg's Swin / ViT recipe, whatever the head
        assert config.optimizer.name == "adamw" and config.optimizer.learning_rate == 6e-5
        assert config.optimizer.weight_decay == 0.01 and config.optimizer.warmup_steps == 1500
        assert config.optimizer.power == 1.0 and not config.optimizer.lr_mult
    elif spec.startswith("mmseg"):
        assert config.optimizer.name == "sgd" and config.optimizer.learning_rate == 0.01
        assert config.optimizer.momentum == 0.9 and config.optimizer.weight_decay == 5e-4
        assert config.optimizer.schedule == "poly" and config.optimizer.power == 0.9
    model = engine.build_model(config)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
    assert jax.tree.leaves(shapes)


def test_every_model_and_family_has_a_recipe():
    """The recipes take their choices from the registries: every model in mmseg.py, every
    family in the quickstart (on the small model of its first model set, with its own
    quickstart fields)."""
    for name in models.list_models():
        assert load_config(f"mmseg.py:{name}").model.name == name
    for family in heads.list_families():
        config = load_config(f"quickstart.py:{family}")
        assert config.model.name in models.list_models()
        assert models.get_spec(config.model.name).family == family
        for key, value in heads.get_family(family).quickstart.items():
            got = config.model[key]
            assert (got.to_dict() if isinstance(got, ConfigDict) else got) == value, key


def test_parse_arg_sets_fields_by_value_or_by_name_with_their_types():
    from configs import common

    depths, strides = ("r50", "r18", "r101"), ("d8", "d16")
    a = common.parse_arg("r101,dataset=ade20k,steps=20", depth=depths, stride=strides,
                         dataset=tuple(common.DATASETS), steps=10, bf16=False)
    assert (a.depth, a.stride, a.dataset, a.steps, a.bf16) == ("r101", "d8", "ade20k", 20, False)
    assert common.parse_arg("", head=("danet", "fcn")).head == "danet"
    assert common.parse_arg("bf16=true", bf16=False).bf16 is True
    with pytest.raises(ValueError, match="'r34' matches no field; expected depth in"):
        common.parse_arg("r34", depth=depths)
    with pytest.raises(ValueError, match="'size' is not a field"):
        common.parse_arg("size=3", depth=depths)
    with pytest.raises(ValueError, match="depth='r34' must be one of"):
        common.parse_arg("depth=r34", depth=depths)
    with pytest.raises(ValueError, match="steps='x' must be a int"):
        common.parse_arg("steps=x", steps=10)


def test_recipes_set_mmsegmentations_schedule_per_dataset():
    ade = load_config("mmseg.py:ccnet_r101_d16,ade20k")
    assert (ade.batch_size, ade.num_steps, ade.dataset.num_classes) == (16, 160_000, 150)
    assert tuple(ade.dataset.eval_scale) == (2048, 512)
    slide = load_config("mmseg.py:cityscapes769")
    assert slide.model.name == "danet_r50_d8"
    assert slide.eval.mode == "slide" and tuple(slide.eval.stride) == (513, 513)
    with pytest.raises(ValueError, match="'danet_r34_d8' matches no field"):
        load_config("mmseg.py:danet_r34_d8")
    with pytest.raises(ValueError, match="'psa' matches no field"):
        load_config("quickstart.py:psa")
    with pytest.raises(FileNotFoundError, match="config file"):
        engine.config.load_config_file("configs/nope.py")
