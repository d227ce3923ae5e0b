"""Test set-up: 8 simulated CPU devices (sharding is exercised without an accelerator)."""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


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
