"""``attnzoo.export``: StableHLO programs of uint8 images that equal the model they came from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnzoo import engine
from attnzoo.export import export_onnx, export_savedmodel, export_stablehlo, load_stablehlo, main
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


@pytest.mark.slow  # 25 s (TensorFlow)
def test_the_savedmodel_runs_in_tensorflow_at_another_batch(run, tmp_path, capsys):
    """Written by the command with a symbolic batch, loaded by ``tf.saved_model.load``, run on
    3 images through ``serve`` and the ``serving_default`` signature: the model's logits
    (1e-4 of the largest: TensorFlow's own XLA compiles it); the folder holds the weights as
    variables, not graph constants."""
    tf = pytest.importorskip("tensorflow")
    workdir, _, _ = run
    out = main(["--workdir", str(workdir), "--format", "savedmodel", "--out",
                str(tmp_path / "sm"), "--size", "64x96"])
    assert "as a SavedModel" in capsys.readouterr().out
    assert (out / "variables").is_dir() and not list(tmp_path.glob(".sm.*"))
    model, variables, config = engine.restore(workdir)
    images = np.random.default_rng(3).integers(0, 256, (3, 64, 96, 3), np.uint8)
    loaded = tf.saved_model.load(str(out))
    want = _jitted_logits(model, variables, images, config)
    _close(loaded.serve(images)["logits"].numpy(), want, tol=1e-4)
    _close(loaded.signatures["serving_default"](images=tf.constant(images))["logits"].numpy(),
           want, tol=1e-4)
    with pytest.raises(ValueError, match="exists; give a new folder"):
        export_savedmodel(model, variables, config, out, size=(64, 96))


@pytest.mark.slow  # 10 s
def test_the_onnx_file_runs_in_onnxruntime_at_any_batch(run, tmp_path, capsys):
    """Written by the command with a symbolic batch, run by onnxruntime on 2 images and on 1:
    the model's logits within 1e-4 of the largest (jitted, and op by op on numpy-normalised
    images); ``--batch 2`` fixes the batch, which the runtime then holds to."""
    ort = pytest.importorskip("onnxruntime")
    workdir, _, _ = run
    out = main(["--workdir", str(workdir), "--format", "onnx", "--out",
                str(tmp_path / "m.onnx"), "--size", "64x96"])
    assert "as ONNX" in capsys.readouterr().out
    model, variables, config = engine.restore(workdir)
    images = np.random.default_rng(4).integers(0, 256, (2, 64, 96, 3), np.uint8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 64, 96, 3]
    for batch in (images, images[1:]):
        got = session.run(None, {"images": batch})[0]
        _close(got, _jitted_logits(model, variables, batch, config), tol=1e-4)
        _close(got, _logits(model, variables, batch), tol=1e-4)
    fixed = main(["--workdir", str(workdir), "--format", "onnx", "--batch", "2", "--out",
                  str(tmp_path / "b2.onnx"), "--size", "64x96"])
    session = ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 64, 96, 3]
    with pytest.raises(Exception, match="dimension|shape"):
        session.run(None, {"images": images[:1]})


@pytest.mark.slow  # 8 s (default run time); test_onnx_graph.py checks a scan is named by default
def test_a_memory_bounded_graph_is_refused_by_onnx_naming_the_loop():
    from attnzoo.engine.config import load_config_file
    from attnzoo.onnx_graph import UnsupportedPrimitiveError
    from helpers import ROOT

    pytest.importorskip("onnx")
    config = load_config_file(f"{ROOT / 'configs' / 'quickstart.py'}:danet")
    config.model.memory_efficient = True
    model = engine.build_model(config)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(UnsupportedPrimitiveError,
                       match="danet_r18_d8 does not export to ONNX: .*'scan'.*memory-bounded"):
        export_onnx(model, variables, config, size=(64, 64))


def _case_model(model_or_config: str):
    """The model, random variables at 64x64 (the quickstart's crop for its configs) and the
    config of a row of ``tools/gen_docs.export_cases``."""
    from attnzoo import models
    from attnzoo.engine.config import load_config_file
    from helpers import ROOT

    if model_or_config.startswith("configs/"):
        config = load_config_file(str(ROOT / model_or_config))
        model = engine.build_model(config)
        size = tuple(config.dataset.crop_size)
    else:
        config = engine.default_config()
        model = models.create(model_or_config, num_classes=5)
        size = (64, 64)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *size, 3)))
    return model, variables, config, size


@pytest.mark.exhaustive  # 12 min
def test_every_family_exports_to_every_format(tmp_path):
    """Every row of the export table in docs/models.md (``tools/gen_docs.export_cases``: each
    family's quickstart model, the first model of its other model sets, the attention U-Net;
    random weights) exports with a symbolic batch to StableHLO, a SavedModel and ONNX, and
    each, run by JAX, TensorFlow and onnxruntime on 2 images, gives the model's jitted logits
    within 1e-5 of the largest for StableHLO, 1e-4 for the others (TensorFlow compiles the
    program with its own XLA, onnxruntime runs its own kernels: 3.6e-5 and 2.8e-5 on the
    Segmenter's ViT)."""
    ort = pytest.importorskip("onnxruntime")
    tf = pytest.importorskip("tensorflow")
    from attnzoo.onnx_graph import UnsupportedPrimitiveError
    from tools.gen_docs import NO_ONNX, export_cases

    for family, model_set, name in export_cases():
        model, variables, config, size = _case_model(name)
        images = np.random.default_rng(2).integers(0, 256, (2, *size, 3), np.uint8)
        want = _jitted_logits(model, variables, images, config)
        what = f"{family} ({name})"
        got = load_stablehlo(export_stablehlo(model, variables, config, size=size))(images)
        _close(got, want, what=f"{what} StableHLO")
        folder = export_savedmodel(model, variables, config, tmp_path / f"{family}_{model_set}",
                                   size=size)
        loaded = tf.saved_model.load(str(folder))  # (held: its variables die with it)
        _close(loaded.serve(images)["logits"].numpy(), want, tol=1e-4, what=f"{what} SavedModel")
        if family in NO_ONNX:
            with pytest.raises(UnsupportedPrimitiveError):
                export_onnx(model, variables, config, size=size)
            continue
        session = ort.InferenceSession(export_onnx(model, variables, config, size=size),
                                       providers=["CPUExecutionProvider"])
        _close(session.run(None, {"images": images})[0], want, tol=1e-4, what=f"{what} ONNX")
