"""Test set-up: 8 simulated CPU devices (sharding is exercised without an accelerator)."""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# commands run by the tests cache no compilations in the user's home (test_cache.py turns it on)
os.environ.setdefault("ATTNZOO_COMPILATION_CACHE", "off")

import pickle  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipes import configs.common


def _shared_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test run's temporary directory: above each pytest-xdist worker's own, so what a
    session fixture writes there under a file lock is made once for all workers."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session")
def context_shapes_dir(tmp_path_factory):
    """A TFDS data_dir holding the prepared ``context_shapes``: prepared once per test run and
    shared by the pytest-xdist workers (the first one prepares it under a file lock)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorflow_datasets")
    from filelock import FileLock

    from attnzoo import data

    data_dir = _shared_directory(tmp_path_factory) / "context_shapes_tfds"
    with FileLock(f"{data_dir}.lock"):
        data.builder("context_shapes", data_dir).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def run(context_shapes_dir, tmp_path_factory):
    """One finished 4-step run of the tiny config on 8 devices (checkpoints at steps 2, 4),
    trained once per test run and shared by the pytest-xdist workers like the dataset (its
    metrics pickled beside it); tests that change it work on a copy."""
    from filelock import FileLock
    from helpers import tiny_config

    from attnzoo import engine

    workdir = _shared_directory(tmp_path_factory) / "run"
    metrics = workdir.with_name("run_metrics.pkl")
    config = tiny_config(context_shapes_dir)
    with FileLock(f"{workdir}.lock"):
        if not metrics.exists():
            metrics.write_bytes(pickle.dumps(engine.train_and_evaluate(config, workdir)))
    return workdir, config, pickle.loads(metrics.read_bytes())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within each file, the tests that read the shared trained ``run`` go last (a stable sort,
    files in their collected order): a worker runs a file's other tests while the other worker
    trains ``run``, instead of waiting for it at the file's first test."""
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.path, i)
    items.sort(key=lambda item: (first[item.path], "run" in item.fixturenames))
