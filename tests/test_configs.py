"""The recipes in ``configs/``: mmseg.py builds every registered model's recipe, the quickstart
every family's; the argument parser; the config fields' domains."""

import re

import jax
import jax.numpy as jnp
import pytest
from helpers import load_config
from ml_collections import ConfigDict

from attnzoo import engine, heads, models
from attnzoo.engine.config import DOMAINS, check_domains


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
    from configs import common

    for name in models.list_models():
        assert load_config(f"mmseg.py:{name}").model.name == name
    for dataset in common.DATASETS:  # every recipe's numbers are inside their domains
        check_domains(load_config(f"mmseg.py:danet_r50_d8,{dataset}"))
    for family in heads.list_families():
        config = load_config(f"quickstart.py:{family}")
        check_domains(config)
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


@pytest.mark.parametrize("field,value", [
    ("optimizer.learning_rate", -0.01), ("optimizer.learning_rate", 0.0),
    ("optimizer.weight_decay", float("nan")), ("optimizer.momentum", 1.0),
    ("optimizer.b2", -0.1), ("optimizer.power", float("inf")), ("optimizer.warmup_steps", -5),
    ("optimizer.decay_ratio", 0.0), ("optimizer.clip_norm", -1.0), ("num_steps", 0),
    ("optimizer.accumulate_steps", True), ("dataset.ignore_index", 256),
    ("dataset.cat_max_ratio", 1.5), ("dataset.crop_size", (64, 0)), ("dataset.ratio_range", (0.0, 2.0)),
    ("dataset.eval_scale", (2048,)), ("eval.stride", (341, -1)), ("eval.scales", ()),
    ("model.head_channels", 0), ("keep_best", -1)])
def test_a_value_outside_its_domain_is_refused_naming_the_field(field, value, tmp_path):
    """A negative learning rate trained (the loss went from 7 to 872, exit 0); every numeric
    field with a domain (``DOMAINS``) is checked before anything is built or written."""
    config = load_config("quickstart.py")
    config.update_from_flattened_dict({field: value})
    assert any(name == field for name, _, _ in DOMAINS)
    with pytest.raises(ValueError, match=rf"config\.{re.escape(field)} must be .*; got "):
        engine.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lr_multipliers_and_the_ratio_range_are_checked_whole():
    config = load_config("quickstart.py")
    config.optimizer.lr_mult = {"head": float("nan")}
    with pytest.raises(ValueError, match="config.optimizer.lr_mult must be a mapping to finite"):
        check_domains(config)
    config = load_config("quickstart.py")
    config.dataset.ratio_range = (2.0, 0.5)
    with pytest.raises(ValueError, match=r"ratio_range must be \(low, high\) with low <= high"):
        check_domains(config)
