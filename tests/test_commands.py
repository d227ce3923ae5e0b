"""The commands on a trained run: ``python -m attnzoo.evaluate`` / ``attnzoo.predict``, restore without TensorFlow, the notebook."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, copy_with_damaged_step

from attnzoo import engine


def test_evaluate_command_reproduces_the_training_evaluation(run, capsys):
    from attnzoo import evaluate

    workdir, config, result = run
    out = evaluate.main(["--workdir", str(workdir)])
    printed = capsys.readouterr().out
    assert out["mIoU"] == pytest.approx(result["mIoU"], abs=1e-6)
    assert "mIoU" in printed and "marker" in printed and "step 4" in printed
    saved = json.loads((workdir / "eval_validation[:16]_step4.json").read_text())
    assert saved["mIoU"] == pytest.approx(result["mIoU"], abs=1e-6)


@pytest.mark.slow
def test_evaluate_command_slide_and_tta_modes(run):
    from attnzoo import evaluate

    workdir, _, result = run
    slide = evaluate.main(["--workdir", str(workdir), "--mode", "slide", "--step", "2"])
    tta = evaluate.main(["--workdir", str(workdir), "--tta", "--memory-efficient"])
    assert slide["step"] == 2 and tta["step"] == 4
    assert 0 <= slide["mIoU"] <= 1 and 0 <= tta["mIoU"] <= 1
    assert tta["mIoU"] != result["mIoU"]  # six scales and flips do change the predictions


@pytest.mark.slow
def test_evaluate_and_predict_with_crf(run, tmp_path, capsys):
    from attnzoo import evaluate, predict, viz
    from attnzoo.data import context_shapes as cs

    workdir, _, result = run
    refined = evaluate.main(["--workdir", str(workdir), "--crf"])
    assert "dense CRF" in capsys.readouterr().out
    assert (workdir / "eval_validation[:16]_step4_crf.json").is_file()
    assert 0 <= refined["mIoU"] <= 1 and refined["mIoU"] != result["mIoU"]
    image, _, _ = cs.render(7, 1, 0)
    path = viz.save_png(tmp_path / "img.png", image.astype(np.uint8))
    plain = predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "plain"), str(path)])
    crf = predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "crf"), "--crf",
                        "--crf-params", "iterations=3,w_appearance=8", str(path)])
    assert [p.name for p in crf] == [p.name for p in plain]
    with pytest.raises(ValueError, match="--crf-params"):
        predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "x"), "--crf",
                      "--crf-params", "bandwidth=3", str(path)])
    # a NaN weight made every pixel background, with no error
    with pytest.raises(ValueError, match="--crf-params: w_appearance must be finite; got 'nan'"):
        evaluate.main(["--workdir", str(workdir), "--crf", "--crf-params", "w_appearance=nan"])
    assert not (tmp_path / "x").exists()


def test_predict_command_writes_masks_overlays_and_attention(run, tmp_path, capsys):
    from PIL import Image

    from attnzoo import predict, viz
    from attnzoo.data import context_shapes as cs

    workdir, _, _ = run
    paths = []
    for i in range(2):
        image, _, _ = cs.render(7, 1, i)
        paths.append(viz.save_png(tmp_path / f"img{i}.png", image.astype(np.uint8)))
    written = predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "out"),
                            "--attention", "--point", "10,10", "--point", "100,60", "--channels", "0,3",
                            *map(str, paths)])
    names = sorted(p.name for p in written)
    assert names == sorted(f"img{i}_{k}.png" for i in range(2)
                           for k in ("mask", "overlay", "pam", "cam"))
    mask = np.asarray(Image.open(tmp_path / "out" / "img0_mask.png"))
    assert mask.shape == (128, 128, 3)
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= set(cs.CLASS_COLOURS)
    assert np.asarray(Image.open(tmp_path / "out" / "img0_pam.png")).shape[1] >= 3 * 128
    with pytest.raises(ValueError, match="--point"):
        predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "o2"), "--attention",
                      "--point", "500,5", str(paths[0])])
    # a.png and a.jpg (or one name in two folders) wrote both to a_mask.png
    jpg = tmp_path / "img0.jpg"
    Image.open(paths[0]).save(jpg)
    (tmp_path / "other").mkdir()
    other = viz.save_png(tmp_path / "other" / "img1.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"images .*img0.png and .*img0.jpg; .*img1.png and "
                                         r".*other/img1.png would write the same"):
        predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "o3"),
                      *map(str, [*paths, jpg, other])])
    assert not (tmp_path / "o3").exists()


@pytest.mark.slow  # 6 s; predict's attention pictures run in the default set
def test_attention_maps_are_the_ones_the_position_attention_applies(run):
    """With PAM's gamma g, out = g * (values weighted by the map) + x: the difference of the
    PAM outputs at gamma 1 and gamma 0 must equal the maps predict draws, applied to the
    values."""
    from attnzoo.predict import _find, attention_maps

    workdir, _, _ = run
    model, variables, _ = engine.restore(workdir)
    image = jnp.asarray(np.random.default_rng(3).normal(size=(1, 64, 64, 3)), jnp.float32)
    h = w = 8  # output stride 8
    points = [(y * 8, x * 8) for y in range(h) for x in range(w)]
    pam, _ = attention_maps(model, variables, image, points, [0])
    assert pam.shape == (h * w, h, w)
    np.testing.assert_allclose(pam.sum(axis=(1, 2)), 1.0, rtol=1e-5)

    def pam_output(gamma):
        params = jax.tree_util.tree_map(lambda a: a, variables["params"])
        _find(params, "pam")["gamma"] = jnp.full_like(_find(params, "pam")["gamma"], gamma)
        _, st = model.apply({**variables, "params": params}, image, mutable=["intermediates"],
                            capture_intermediates=lambda m, _: m.name in ("pam", "value_conv"))
        inter = st["intermediates"]
        return _find(inter, "pam")["__call__"][0], _find(inter, "value_conv")["__call__"][0]

    out1, values = pam_output(1.0)
    out0, _ = pam_output(0.0)
    weighted = pam.reshape(h * w, h * w) @ np.asarray(values).reshape(h * w, -1)
    np.testing.assert_allclose(np.asarray(out1 - out0).reshape(h * w, -1), weighted,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # a subprocess importing everything (10 s)
def test_restore_and_predict_need_no_tensorflow(run, tmp_path):
    workdir, config, _ = run
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None\n"
        "import numpy as np\n"
        "from attnzoo.engine import restore\n"
        "from attnzoo import predict, viz\n"
        f"model, variables, config = restore({str(workdir)!r})\n"
        "print(model.apply(variables, np.zeros((1, 64, 64, 3), np.float32))['out'].shape)\n"
        f"p = viz.save_png({str(tmp_path / 'x.png')!r}, np.full((64, 64, 3), 90, np.uint8))\n"
        f"print(len(predict.predict_files({str(workdir)!r}, [p], {str(tmp_path / 'o')!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["(1,", "64,", "64,", f"{config.dataset.num_classes})", "2"]


@pytest.mark.slow
def test_compose_attention_notebook_runs(run, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    workdir, _, _ = run
    monkeypatch.setenv("ATTNZOO_RUN", str(workdir))
    notebook = nbformat.read(ROOT / "examples" / "compose_attention.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "examples")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "max |block - reference|" in text and "restored from" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_user_errors_print_one_line_and_debug_shows_the_traceback(tmp_path):
    """A garbage checkpoint for ``python -m attnzoo.convert`` and a bad config for
    ``train.py``: exit status 2, one ``error:`` line; ``--debug`` gives the traceback."""
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"not a checkpoint")
    convert = [sys.executable, "-m", "attnzoo.convert", "--source", "timm:resnet18",
               "--checkpoint", str(garbage), "--out", str(tmp_path / "out")]
    done = subprocess.run(convert, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"error: checkpoint '{garbage}' cannot be read")
    debug = subprocess.run(convert + ["--debug"], capture_output=True, text=True, cwd=ROOT,
                           timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    train = [sys.executable, "train.py", "--config=configs/quickstart.py",
             f"--workdir={tmp_path / 'w'}", "--config.eval_every=0"]
    done = subprocess.run(train, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: config.eval_every must be a positive integer; got 0  (--debug or "
        "ATTNZOO_DEBUG=1 shows the traceback)"]


@pytest.mark.slow
def test_evaluate_falls_back_past_an_unreadable_checkpoint_with_one_warning(run, tmp_path):
    copy = copy_with_damaged_step(run[0], tmp_path / "copy")
    done = subprocess.run([sys.executable, "-m", "attnzoo.evaluate", "--workdir", str(copy)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if "unreadable" in line]
    assert len(warnings) == 1 and "checkpoint step 4" in warnings[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) < 60
    assert "step 2, split" in done.stdout
    # asked for by number, the damaged step is one line (it was 166 lines of orbax traceback)
    done = subprocess.run([sys.executable, "-m", "attnzoo.evaluate", "--workdir", str(copy),
                           "--step", "4"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and "checkpoint step 4 in" in errors[0] and "is unreadable" in errors[0]
    from attnzoo import engine

    with pytest.raises(FileNotFoundError, match=r"no checkpoint step 3 in .*; its steps: \[2, 4\]"):
        engine.restore(copy, step=3)


@pytest.mark.slow  # 10 s
def test_predict_takes_the_memory_bounded_attention_when_the_map_would_not_fit(
        run, tmp_path, monkeypatch, caplog):
    """An image whose dense attention map (traced, not run) exceeds a quarter of the free
    memory is predicted with the memory-bounded attention, said in one line, with the masks
    ``--memory-efficient`` gives; with less free memory than even that path's largest array,
    the image is refused by name. (Free memory is set small here: the real case is a
    4000x3000 image, whose DANet-R18 map alone is 131 GiB.)"""
    import logging

    from attnzoo import inference, predict, viz

    workdir, _, _ = run
    image = np.random.default_rng(0).integers(0, 255, (384, 384, 3), np.uint8)
    path = viz.save_png(tmp_path / "big.png", image)
    dense_map = 4 * ((384 // 8) * (384 // 8)) ** 2  # float32 (N x N), 21 MiB; convs: < 10 MiB
    monkeypatch.setattr(inference, "available_memory_bytes", lambda: 4 * dense_map - 1)
    with caplog.at_level(logging.INFO, logger="attnzoo"):
        auto = predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "auto"), str(path)])
    assert "using the memory-bounded attention" in caplog.text and "384x384" in caplog.text
    bounded = predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "bounded"),
                            "--memory-efficient", str(path)])
    assert viz.load_image(auto[0]).tolist() == viz.load_image(bounded[0]).tolist()
    monkeypatch.setattr(inference, "available_memory_bytes", lambda: 1000)
    with pytest.raises(ValueError, match=r"big.png: predicting this 384x384 image needs at least"):
        predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "none"), str(path)])


@pytest.mark.slow  # default run time
def test_an_output_folder_that_is_a_file_or_under_one_is_one_line(run, tmp_path, capsys):
    from attnzoo import predict, viz
    from attnzoo._checks import check_writable_folder
    from attnzoo.convert.__main__ import main as convert

    workdir, _, _ = run
    blocker = tmp_path / "file"
    blocker.write_text("x")
    image = viz.save_png(tmp_path / "a.png", np.full((32, 32, 3), 90, np.uint8))
    for out, said in ((blocker, "is a file, not a folder"),
                      (blocker / "sub", f"is under {blocker}, a file, not a folder")):
        with pytest.raises(ValueError, match=f"--out {out} {said}"):
            predict.main(["--workdir", str(workdir), "--out", str(out), str(image)])
        with pytest.raises(ValueError, match=f"--out {out} {said}"):
            convert(["--source", "timm:resnet18", "--checkpoint", str(tmp_path / "none.pth"),
                     "--out", str(out)])
    assert check_writable_folder(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()


READ_ONLY = """
set -e
mount -t tmpfs -o size=64m tmpfs {disk} || exit 99
cp -r {workdir} {disk}/run
mount -o remount,ro {disk}
cd {root}
for cmd in "attnzoo.predict --workdir {disk}/run --out {disk}/masks {image}" \\
           "attnzoo.evaluate --workdir {disk}/run" \\
           "attnzoo.convert --source timm:resnet18 --checkpoint {tmp}/none.pth --out {disk}/conv"
do
  {python} -m $cmd > {tmp}/out 2> {tmp}/err && echo "exit 0" || echo "exit $?"
  echo "tracebacks $(grep -c Traceback {tmp}/err || true), last: $(tail -1 {tmp}/err)"
  grep -c "mIoU" {tmp}/out || true
done
"""


@pytest.mark.slow
def test_a_read_only_output_folder_is_one_line(run, tmp_path):
    """On a read-only file system (a tmpfs remounted read-only in a private mount namespace;
    file permissions do not stop root): ``predict --out`` and ``convert --out`` are refused
    before anything runs, ``evaluate`` prints its table and then one line (its metrics file
    cannot be written); each exits with status 2 and no traceback (they were tracebacks)."""
    from attnzoo import viz

    workdir, _, _ = run
    disk = tmp_path / "disk"
    disk.mkdir()
    image = viz.save_png(tmp_path / "a.png", np.full((32, 32, 3), 90, np.uint8))
    script = READ_ONLY.format(disk=disk, workdir=workdir, root=ROOT, image=image, tmp=tmp_path,
                              python=sys.executable)
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, timeout=600)
    if done.returncode == 99 or "unshare failed" in done.stderr:
        pytest.skip(f"no private tmpfs here (root and mount namespaces needed): {done.stderr}")
    lines = done.stdout.splitlines()
    assert len(lines) == 9, done.stdout + done.stderr
    predict, evaluate, convert = lines[0:3], lines[3:6], lines[6:9]
    for result in (predict, evaluate, convert):
        assert result[0] == "exit 2" and result[1].startswith("tracebacks 0, last: error: "), result
    assert f"--out {disk}/masks cannot be written ({disk}: Read-only file system)" in predict[1]
    assert f"--out {disk}/conv cannot be written ({disk}: Read-only file system)" in convert[1]
    assert "the metrics above could not be written to" in evaluate[1]
    assert "(Read-only file system); the table is the result" in evaluate[1]
    assert evaluate[2] != "0" and predict[2] == convert[2] == "0"  # evaluate printed its table


@pytest.mark.slow  # default run time
def test_predict_writes_class_indices_with_the_runs_protocol(run, tmp_path):
    """``--format index`` writes each image's class indices at its own size: the labels
    ``attnzoo.Segmenter`` gives with the run's protocol; ``--format`` names are checked."""
    from PIL import Image

    from attnzoo import Segmenter, predict, viz
    from attnzoo.data import context_shapes as cs

    workdir, _, _ = run
    image, _, _ = cs.render(5, 1, 0)
    path = viz.save_png(tmp_path / "odd.png", image[:77, :101].astype(np.uint8))
    written = predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "o"),
                            "--format", "index", str(path)])
    assert [p.name for p in written] == ["odd_labels.png"]
    labels = np.asarray(Image.open(written[0]))
    np.testing.assert_array_equal(labels, Segmenter.from_run(workdir)(str(path)).labels)
    with pytest.raises(ValueError, match="--format must be one of"):
        predict.main(["--workdir", str(workdir), "--out", str(tmp_path / "p"), "--format",
                      "colour", str(path)])
