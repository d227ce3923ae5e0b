"""What a new user meets first: registry contracts checked when an entry is registered, the
nearest name suggested for a misspelt one (registries, fields, config overrides), non-float
input refused by name, ``list_*`` patterns and descriptions, the lines a run starts with, a
finished run evaluated once, and output with nothing but attnzoo's own lines (orbax's
warnings on restore: ``test_checkpoint.py``)."""

import os
import subprocess
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, jsonl

from attnzoo import backbones, blocks, engine, heads, models, ops
from attnzoo.data import context_shapes as cs
from attnzoo.engine.train import start_notes


class Gain(nn.Module):
    """A learnt per-channel gain: keeps the block contract."""

    channels: int
    start: float = 1.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        gain = self.param("gain", nn.initializers.constant(self.start), (self.channels,),
                          self.param_dtype)
        return (x * gain).astype(self.dtype)


class NoDtype(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return x


class NoTrain(Gain):
    @nn.compact
    def __call__(self, x):
        return x


class Shrinks(Gain):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return x[..., :1]


class Raises(Gain):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return x @ jnp.ones((3, 3))


def _without_default():
    class NeedsDepth(nn.Module):
        channels: int
        depth: int
        dtype: Any = jnp.float32
        param_dtype: Any = jnp.float32

        def __call__(self, x, *, train: bool = False):
            return x

    return NeedsDepth


@pytest.fixture
def scratch_block():
    """Registers under ``"friction_test"`` go away after the test (the registry is global)."""
    yield "friction_test"
    blocks.registry._BLOCKS._entries.pop("friction_test", None)


@pytest.mark.parametrize("factory,match", [
    (lambda **kw: Gain(**kw), "must be a flax.linen.Module class"),
    (NoDtype, r"lacks the field\(s\) \['dtype', 'param_dtype'\]"),
    (NoTrain, r"__call__ must take the keyword\(s\) \['train'\]"),
    (_without_default(), r"fields \['depth'\] have no default"),
    (Shrinks, r"returns its input's shape \(1, 8, 8, 8\); on its example it returned "
              r"\(1, 8, 8, 1\)"),
    (Raises, "calling it on its example .* failed: TypeError"),
])
def test_register_refuses_a_block_that_breaks_the_contract(scratch_block, factory, match):
    with pytest.raises(ValueError, match=match):
        blocks.register(scratch_block, factory)
    assert scratch_block not in blocks.list_blocks()


def test_a_block_that_keeps_the_contract_registers_and_is_created_by_name(scratch_block):
    blocks.register(scratch_block, Gain, paper="-")
    module = blocks.create(scratch_block, channels=4, start=2.0)
    x = jnp.arange(8.0).reshape(1, 1, 2, 4)
    np.testing.assert_array_equal(module.apply(module.init(jax.random.key(0), x), x), 2 * x)
    assert blocks.list_blocks("friction_*", describe=True) == {
        scratch_block: "A learnt per-channel gain: keeps the block contract. [-]"}
    assert "contract" in (blocks.register.__doc__ or "")


def test_heads_backbones_and_models_are_checked_when_registered():
    with pytest.raises(ValueError, match=r"head 'friction_test' \(Gain\) lacks the field\(s\) "
                                         r"\['num_classes'\]"):
        heads.HEADS.add("friction_test", Gain)
    with pytest.raises(ValueError, match="a backbone has a feature_info"):
        backbones.register("friction_test", Gain)
    with pytest.raises(ValueError, match=r"backbone 'friction_test' \(Gain\) has no field "
                                         r"'strat' \(did you mean 'start'\?\)"):
        backbones.register("friction_test", Gain, strat=2.0)
    with pytest.raises(ValueError, match=r"head name must be one of .*; got 'dannet' "
                                         r"\(did you mean 'danet'\?\)"):
        models.EncoderDecoderSpec(backbone="resnet18_v1c", head="dannet")
    with pytest.raises(ValueError, match=r"head 'danet' \(DANetHead\) has no field 'channel' "
                                         r"\(did you mean 'channels'\?\)"):
        models.EncoderDecoderSpec(backbone="resnet18_v1c", head="danet",
                                  head_kwargs={"channel": 64})
    with pytest.raises(ValueError, match="a model is registered as an EncoderDecoderSpec"):
        models.register("friction_test", {"backbone": "resnet18_v1c"})
    for registry in (heads.HEADS, backbones.BACKBONES, models.MODELS):
        assert "friction_test" not in registry.names()


@pytest.mark.parametrize("call,match", [
    (lambda: blocks.create("se", channel=16),
     r"block 'se' \(SqueezeExcite\) has no field 'channel' \(did you mean 'channels'\?\); "
     r"its fields are \[.*'channels'"),
    (lambda: blocks.create("cbma", channels=16), r"got 'cbma' \(did you mean 'cbam'\?\)"),
    (lambda: heads.create("dannet", num_classes=3), r"\(did you mean 'danet'\?\)"),
    (lambda: heads.create("danet", num_classes=3, dropuot=0.1), r"\(did you mean 'dropout'\?\)"),
    (lambda: heads.create_neck("multilevle"), r"\(did you mean 'multilevel'\?\)"),
    (lambda: backbones.create("resnet50_v1", output_stride=8), r"\(did you mean 'resnet50_v1"),
    (lambda: backbones.create("resnet50_v1c", output_strid=8),
     r"\(did you mean 'output_stride'\?\)"),
    (lambda: models.create("danet_r50d8", num_classes=3), r"\(did you mean 'danet_r50_d8'\?\)"),
    (lambda: models.create("danet_r50_d8", num_classes=3, head_channel=8),
     r"model 'danet_r50_d8' \(danet head on resnet50_v1c, output stride 8\) has no field "
     r"'head_channel' \(did you mean 'head_channels'\?\)"),
    (lambda: heads.get_family("psp"), r"\(did you mean 'pspnet'\?\)"),
])
def test_misspelt_names_and_fields_get_the_nearest_suggested(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _one_line_error_of_override(override):
    """``train.py`` on the quickstart with ``override``: its stderr, checked to be one line
    without a traceback and exit status 2."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"),
                           f"--config={ROOT / 'configs' / 'quickstart.py'}", "--workdir=unused",
                           override], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    return proc.stderr


def test_a_misspelt_config_override_is_one_line_with_the_suggestion():
    stderr = _one_line_error_of_override("--config.num_step=3")
    assert "the config has no field 'num_step'" in stderr
    assert 'Did you mean "num_steps"' in stderr


@pytest.mark.slow  # default run time
def test_an_unknown_config_override_names_the_nearest_fields():
    """``--config.foo=1``: ml_collections suggests nothing so far from every name; the three
    nearest dotted fields of the default config are named instead, on one line."""
    stderr = _one_line_error_of_override("--config.optimizer.schedul_kind=poly")
    assert "the config has no field 'schedul_kind'; nearest fields: optimizer.schedule, " \
        in stderr, stderr


def test_list_functions_take_a_pattern_and_describe_each_entry():
    every = blocks.list_blocks()
    assert blocks.list_blocks("s*") == [n for n in every if n.startswith("s")] != []
    assert models.list_models("danet_r50_*") == ["danet_r50_d16", "danet_r50_d8"]
    assert heads.list_families("da*", describe=True) == {
        "danet": heads.get_family("danet").summary}
    for listing in (blocks.list_blocks, heads.list_heads, heads.list_necks,
                    backbones.list_backbones, models.list_models, heads.list_families):
        described = listing(describe=True)
        assert list(described) == listing()
        assert all(text and "\n" not in text for text in described.values()), listing.__name__
    assert models.list_models("danet_r50_d8", describe=True) == {
        "danet_r50_d8": "danet head on resnet50_v1c, output stride 8"}
    assert backbones.list_backbones("swin_t", describe=True)["swin_t"].startswith(
        "Swin Transformer (Liu et al., ICCV 2021)")


def test_dir_of_the_packages_lists_their_functions_not_their_submodules():
    names = dir(ops)
    assert "position_attention" in names and "dense_crf" in names
    assert not {"position", "crf", "dot_product", "window"} & set(names)
    assert "create" in dir(blocks) and "registry" not in dir(blocks)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.position_attention(*[jnp.ones((1, 4, 4, 8), jnp.int32)] * 3),
     "query must be a floating-point array .* got int32"),
    (lambda: ops.channel_attention(jnp.ones((1, 4, 4, 8), jnp.uint8)),
     "x must be a floating-point array .* got uint8"),
    (lambda: ops.dot_product_attention(*[jnp.ones((2, 5, 4), jnp.int8)] * 3),
     "query must be a floating-point"),
    (lambda: ops.conv2d(jnp.ones((1, 4, 4, 3), jnp.int32), jnp.ones((3, 3, 3, 2))),
     "x must be a floating-point"),
    (lambda: ops.criss_cross_attention(*[jnp.ones((1, 4, 4, 8), bool)] * 3),
     "query must be a floating-point .* got bool"),
])
def test_ops_refuse_integer_and_boolean_input_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_channels_first_input_gets_a_hint_about_nhwc():
    block = blocks.create("se", channels=3)
    with pytest.raises(ValueError, match=r"axis 1 has 3: attnzoo takes channels last \(NHWC\)"):
        block.init(jax.random.key(0), jnp.ones((1, 3, 16, 16)))
    model = models.create("fcn_r18_d8", num_classes=2)
    with pytest.raises(ValueError, match="images must be a floating-point array"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 32, 32, 3), jnp.uint8))


def test_start_notes_warn_of_a_warm_up_longer_than_the_run_and_a_new_device_count():
    config = engine.default_config()
    config.num_steps, config.optimizer.warmup_steps = 100, 1500
    config.batch_size = 16
    model = models.create("danet_r18_d8", num_classes=5,
                          backbone_kwargs={"width": 8, "stem_width": 8}, head_channels=512)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    notes = start_notes(config, model, params, mesh,
                        rows=[{"step": 0, "split": "start", "devices": 2}])
    assert notes[0] == ("warning: optimizer.warmup_steps=1500 exceeds the run's 100 updates: the "
                        "learning rate never reaches its peak 0.01")
    assert notes[1].startswith("note: the DANetHead is 512 wide on 64-wide backbone features (c4): ")
    assert notes[2] == ("note: the run continues on 8 devices; it last ran on 2 (global batch 16 "
                        "unchanged: per-device batch 2 instead of 8)")
    config.optimizer.warmup_steps = 0
    fitting = models.create("danet_r18_d8", num_classes=5, head_channels=64)
    params = jax.eval_shape(fitting.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert start_notes(config, fitting, params, mesh,
                       rows=[{"step": 0, "split": "start", "devices": 8}]) == []


@pytest.mark.parametrize("command,example", [
    ([str(ROOT / "train.py")], "--workdir runs/danet \\\n        --config.dataset.manual_dir"),
    (["-m", "attnzoo.predict"], "--attention \\\n        --point 64,64"),
    (["-m", "attnzoo.convert"], "hrnetv2_w18-00eb2006.pth \\\n        --out DIR"),
    (["-m", "attnzoo.prepare"], "--manual-dir /data/context --data-dir /data/tfds"),
])
def test_help_shows_the_examples_as_typed(command, example):
    proc = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert example in proc.stdout, proc.stdout[:2000]  # absl's --help exits with status 1


@pytest.mark.slow
def test_a_run_starts_with_its_layout_prints_only_attnzoos_lines_and_evaluates_once(
        context_shapes_dir, tmp_path):
    """The tiny CLI run on 2 simulated devices: its start-up lines, nothing on stderr (no
    TensorFlow or orbax notices); run again when finished, it evaluates without writing a
    second evaluation; continued on 1 device, it says so."""
    from test_train import tiny_cli_flags

    def train(devices, steps):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        proc = subprocess.run(tiny_cli_flags(context_shapes_dir, tmp_path / "w", steps, 2),
                              capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    first = train(2, 2)
    assert first.stderr == ""
    assert ("mesh (data=2, fsdp=1) over 2 cpu device(s) of 1 process(es); per-device batch 4 "
            "(global 8), evaluation 4 (global 8); parameters and optimizer state replicated on "
            "every device; batches split along ('data', 'fsdp')") in first.stdout
    assert "evaluation metrics in percent" in first.stdout
    again = train(2, 2)
    assert again.stderr == "" and "continues on" not in again.stdout
    rows = jsonl(tmp_path / "w" / "metrics.jsonl")
    (evaluation,) = [r for r in rows if r["split"] == "eval"]
    assert list(evaluation["IoU"]) == list(cs.CLASSES)
    assert evaluation["mIoU"] == pytest.approx(np.nanmean(list(evaluation["IoU"].values())))
    longer = train(1, 4)
    assert ("note: the run continues on 1 devices; it last ran on 2 (global batch 8 unchanged: "
            "per-device batch 8 instead of 4)") in longer.stdout
