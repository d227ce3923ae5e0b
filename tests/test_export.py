"""``attnzoo.export``: StableHLO programs of uint8 images that equal the model they came from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import engine
from attnzoo.export import export_stablehlo, load_stablehlo, main
from attnzoo.pixels import normalize_image


def _logits(model, variables, images):
    """The model's logits on the images normalised as the pipelines do (numpy), op by op."""
    return np.asarray(model.apply(variables, jnp.asarray(normalize_image(images)))["out"])


def _jitted_logits(model, variables, images, config):
    """The same, normalised inside one jitted program as the exported one is: XLA fuses the
    normalisation into the first layer, which rounds otherwise (3e-5 of the largest logit of
    a random-weight ViT against numpy's normalisation)."""
    mean, std = (jnp.asarray(config.model[k], jnp.float32) for k in ("pixel_mean", "pixel_std"))
    apply = jax.jit(lambda v, i: model.apply(v, (i.astype(jnp.float32) - mean) / std)["out"])
    return np.asarray(apply(variables, images))


def _close(got, want, tol=1e-5, what=""):
    err = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
    assert err <= tol, f"{what}: max relative error {err:.2e}"


@pytest.mark.slow  # default run time
def test_the_exported_program_equals_the_model_at_another_batch(run, tmp_path, capsys):
    """Exported with a symbolic batch at 64x96, reloaded from the file by JAX alone, run on
    3 uint8 images: the logits of the model on the same normalised images (1e-5 of the
    largest)."""
    workdir, _, _ = run
    out = main(["--workdir", str(workdir), "--out", str(tmp_path / "m.stablehlo"),
                "--size", "64x96"])
    assert "as StableHLO" in capsys.readouterr().out
    model, variables, config = engine.restore(workdir)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 96, 3), np.uint8)
    got = load_stablehlo(out)(images)
    _close(got, _jitted_logits(model, variables, images, config))
    _close(got, _logits(model, variables, images), tol=1e-4)
    with pytest.raises(ValueError, match="exists; give a new file"):
        main(["--workdir", str(workdir), "--out", str(out), "--size", "64x96"])
    with pytest.raises(ValueError, match="--size takes HxW"):
        main(["--workdir", str(workdir), "--out", str(tmp_path / "n"), "--size", "64"])


@pytest.mark.slow  # 5 s
def test_a_fixed_batch_is_kept(run):
    workdir, _, _ = run
    model, variables, config = engine.restore(workdir)
    program = load_stablehlo(export_stablehlo(model, variables, config, size=(48, 80), batch=2))
    images = np.random.default_rng(1).integers(0, 256, (2, 48, 80, 3), np.uint8)
    _close(program(images), _jitted_logits(model, variables, images, config))
    with pytest.raises(Exception, match="shape"):
        program(images[:1])
    with pytest.raises(ValueError, match="batch must be positive"):
        export_stablehlo(model, variables, config, size=(48, 80), batch=0)


@pytest.mark.exhaustive  # 100 s
def test_every_head_family_exports():
    """The quickstart's model of every head family (``configs/quickstart.py:<family>``, random
    weights) exports with a symbolic batch and runs, reloaded, at batch 2 with the model's
    jitted logits (1e-5 of the largest) and its op-by-op ones on numpy-normalised images
    (1e-4: the normalisation fused otherwise)."""
    from attnzoo import heads
    from attnzoo.engine.config import load_config_file
    from helpers import ROOT

    for family in heads.list_families():
        config = load_config_file(f"{ROOT / 'configs' / 'quickstart.py'}:{family}")
        model = engine.build_model(config)
        size = tuple(config.dataset.crop_size)
        variables = model.init(jax.random.key(0), jnp.zeros((1, *size, 3)))
        images = np.random.default_rng(2).integers(0, 256, (2, *size, 3), np.uint8)
        got = load_stablehlo(export_stablehlo(model, variables, config, size=size))(images)
        _close(got, _jitted_logits(model, variables, images, config), what=family)
        _close(got, _logits(model, variables, images), tol=1e-4, what=family)
