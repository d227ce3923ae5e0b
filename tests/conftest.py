"""Test set-up: 8 simulated CPU devices (sharding is exercised without an accelerator)."""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# commands run by the tests cache no compilations in the user's home (test_cache.py turns it on)
os.environ.setdefault("ATTNZOO_COMPILATION_CACHE", "off")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipes import configs.common


@pytest.fixture(scope="session")
def context_shapes_dir(tmp_path_factory):
    """A TFDS data_dir holding the prepared ``context_shapes``: prepared once per test run and
    shared by the pytest-xdist workers (the first one prepares it under a file lock)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorflow_datasets")
    from filelock import FileLock

    from attnzoo import data

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    data_dir = root / "context_shapes_tfds"
    with FileLock(f"{data_dir}.lock"):
        data.builder("context_shapes", data_dir).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def run(context_shapes_dir, tmp_path_factory):
    """One finished 4-step run of the tiny config on 8 devices (checkpoints at steps 2, 4);
    tests that change it work on a copy."""
    from helpers import tiny_config

    from attnzoo import engine

    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config(context_shapes_dir)
    result = engine.train_and_evaluate(config, workdir)
    return workdir, config, result
