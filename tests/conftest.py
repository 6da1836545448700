"""Test-wide setup: 4 fake CPU devices (before jax starts) and shared fixtures."""

import os

# Multi-device code is tested on fake CPU devices; must be set before jax initialises.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mini_observatory(tmp_path_factory):
    """Cache dir of the simulated `mini` observatory (3 containers), built once per session."""
    from quantformer_jax.data import simulate

    out = tmp_path_factory.mktemp("mini_observatory")
    simulate.build_observatory(out, size="mini", seed=0)
    return out
