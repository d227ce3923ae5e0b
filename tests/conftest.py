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
    """A TFDS data_dir holding the prepared ``context_shapes`` (once per test session)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorflow_datasets")
    from attnzoo import data

    data_dir = tmp_path_factory.mktemp("tfds")
    data.builder("context_shapes", data_dir).download_and_prepare()
    return data_dir
