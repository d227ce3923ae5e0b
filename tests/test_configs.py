"""The recipes in ``configs/``: every shipped config builds its model; the argument parser."""

import jax
import jax.numpy as jnp
import pytest
from helpers import load_config

from attnzoo import engine


@pytest.mark.parametrize("spec,name,crop,steps", [
    ("fcn.py", "fcn_r50_d8", (512, 1024), 80_000),
    ("danet.py:r101,cityscapes769", "danet_r101_d8", (769, 769), 80_000),
    ("ccnet.py:r50,ade20k", "ccnet_r50_d8", (512, 512), 160_000),
    ("nonlocal.py", "nonlocal_r50_d8", (512, 1024), 80_000),
    ("psa.py", "psa_r50_d8", (512, 1024), 80_000),
    ("deeplabv3.py:r101", "deeplabv3_r101_d8", (512, 1024), 80_000),
    ("attention_unet.py", "attention_unet", (512, 1024), 80_000),
    ("quickstart.py", "danet_r18_d8", (128, 128), 1000),
    ("quickstart.py:ccnet", "ccnet_r18_d8", (128, 128), 1000),
    ("quickstart.py:psanet", "psanet_r18_d8", (128, 128), 1000),
    ("quickstart.py:segformer", "segformer_mit-b0", (128, 128), 1000),
    ("segformer.py", "segformer_mit-b0", (512, 512), 160_000),
    ("segformer.py:b5,cityscapes1024", "segformer_mit-b5", (1024, 1024), 160_000),
])
def test_shipped_configs_build_their_model(spec, name, crop, steps):
    config = load_config(spec)
    assert config.model.name == name
    assert tuple(config.dataset.crop_size) == crop and config.num_steps == steps
    if spec.startswith("segformer"):
        assert config.optimizer.name == "adamw" and config.optimizer.learning_rate == 6e-5
        assert config.optimizer.warmup_steps == 1500 and config.optimizer.power == 1.0
        assert dict(config.optimizer.lr_mult) == {"head": 10.0}
    elif not spec.startswith("quickstart"):
        assert config.optimizer.name == "sgd" and config.optimizer.learning_rate == 0.01
        assert config.optimizer.momentum == 0.9 and config.optimizer.weight_decay == 5e-4
        assert config.optimizer.schedule == "poly" and config.optimizer.power == 0.9
    model = engine.build_model(config)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
    assert jax.tree.leaves(shapes)


def test_parse_arg_sets_fields_by_value_or_by_name_with_their_types():
    from configs import common

    a = common.parse_arg("r101,dataset=ade20k,steps=20", depth=common.DEPTHS,
                         stride=common.STRIDES, dataset=tuple(common.DATASETS), steps=10,
                         bf16=False)
    assert (a.depth, a.stride, a.dataset, a.steps, a.bf16) == ("r101", "d8", "ade20k", 20, False)
    assert common.parse_arg("", head=("danet", "fcn")).head == "danet"
    assert common.parse_arg("bf16=true", bf16=False).bf16 is True
    with pytest.raises(ValueError, match="'r34' matches no field; expected depth in"):
        common.parse_arg("r34", depth=common.DEPTHS)
    with pytest.raises(ValueError, match="'size' is not a field"):
        common.parse_arg("size=3", depth=common.DEPTHS)
    with pytest.raises(ValueError, match="depth='r34' must be one of"):
        common.parse_arg("depth=r34", depth=common.DEPTHS)
    with pytest.raises(ValueError, match="steps='x' must be a int"):
        common.parse_arg("steps=x", steps=10)


def test_recipes_set_mmsegmentations_schedule_per_dataset():
    ade = load_config("ccnet.py:r101,d16,ade20k")
    assert ade.model.name == "ccnet_r101_d16" and ade.model.head_kwargs.recurrence == 2
    assert (ade.batch_size, ade.num_steps, ade.dataset.num_classes) == (16, 160_000, 150)
    assert tuple(ade.dataset.eval_scale) == (2048, 512)
    slide = load_config("danet.py:cityscapes769")
    assert slide.eval.mode == "slide" and tuple(slide.eval.stride) == (513, 513)
    assert load_config("psa.py:sequential").model.name == "psas_r50_d8"
    assert load_config("attention_unet.py:small,ade20k").model.name == "attention_unet_small"
    with pytest.raises(ValueError, match="matches no field"):
        load_config("danet.py:r34")
    with pytest.raises(FileNotFoundError, match="config file"):
        engine.config.load_config_file("configs/nope.py")
