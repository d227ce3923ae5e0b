"""The persistent compilation cache of the commands (``attnzoo.engine.cache``)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from attnzoo.engine import cache


@pytest.mark.parametrize("env,expected", [
    ({"ATTNZOO_COMPILATION_CACHE": "/tmp/cc"}, Path("/tmp/cc")),
    ({"ATTNZOO_COMPILATION_CACHE": "off"}, None),
    ({"ATTNZOO_COMPILATION_CACHE": "0"}, None),
    ({"XDG_CACHE_HOME": "/x"}, Path("/x/attnzoo/jax")),
])
def test_default_directory_follows_the_environment(monkeypatch, env, expected):
    for key in ("ATTNZOO_COMPILATION_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cache.default_directory() == expected


def test_off_sets_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNZOO_COMPILATION_CACHE", "off")
    assert cache.use_compilation_cache() is None
    assert cache.use_compilation_cache(tmp_path / "c", enabled=False) is None
    assert not (tmp_path / "c").exists()


def test_unwritable_directory_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PermissionError, match="compilation cache directory .*file/c"):
        cache.use_compilation_cache(tmp_path / "file" / "c")


@pytest.mark.slow
def test_predict_writes_then_reads_the_cache(run, tmp_path):
    """The command fills the directory on its first start; the second start adds nothing (every
    program came from the cache) and writes the same masks; --no-compilation-cache touches
    no directory."""
    from attnzoo import viz
    from attnzoo.data import context_shapes as cs

    workdir, _, _ = run
    image = viz.save_png(tmp_path / "img.png", cs.render(3, 1, 0)[0])
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

    def predict(out: str, *flags: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "attnzoo.predict", "--workdir", str(workdir),
                               "--out", str(tmp_path / out), *flags, str(image)],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    predict("a", "--compilation-cache", str(tmp_path / "cc"))
    entries = sorted(p.name for p in (tmp_path / "cc").iterdir())
    assert entries
    predict("b", "--compilation-cache", str(tmp_path / "cc"))
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == entries
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "img_mask.png")),
                                  np.asarray(Image.open(tmp_path / "b" / "img_mask.png")))
    predict("c", "--compilation-cache", str(tmp_path / "none"), "--no-compilation-cache")
    assert not (tmp_path / "none").exists()
