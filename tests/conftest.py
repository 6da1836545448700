"""Test-wide setup: 4 fake CPU devices (before jax starts) and shared fixtures."""

import os

# Multi-device code is tested on fake CPU devices; must be set before jax initialises.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from quantformer_jax import runtime  # noqa: E402

runtime.tune_host_allocator()  # as every entry point does; before jax allocates

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mini_observatory(tmp_path_factory):
    """Cache dir of the simulated `mini` observatory (3 containers), built once per session."""
    from quantformer_jax.data import simulate

    out = tmp_path_factory.mktemp("mini_observatory")
    simulate.build_observatory(out, size="mini", seed=0)
    return out


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """A persistent compilation cache for one module: resumed runs and evaluations recompile the
    same steps, so they hit the cache instead of XLA."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    path = str(tmp_path_factory.mktemp("jax_cache"))
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    yield path
    jax.config.update("jax_compilation_cache_dir", previous)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, mini_observatory):
    """A runlocal pretraining workdir, trained once per session (shared by the finetuning tests)."""
    from configs import pretrain as pretrain_config
    from quantformer_jax.training import pretrain

    workdir = str(tmp_path_factory.getbasetemp() / "finetune_pretrain")
    if os.path.isdir(os.path.join(workdir, "checkpoints", "best")):
        return workdir
    config = pretrain_config.get_config("runlocal")
    config.data.cache_dir = str(mini_observatory)
    config.training.update({"num_devices": 1, "progress_bar": False})
    pretrain.train_and_evaluate(config, workdir)
    return workdir
