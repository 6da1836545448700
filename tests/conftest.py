"""Test-wide setup: 4 fake CPU devices (before jax starts) and shared fixtures."""

import os

# Multi-device code is tested on fake CPU devices; must be set before jax initialises.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
