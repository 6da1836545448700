"""Real Allen Brain Observatory data through allensdk: download, cache listing, cross-check.

These modules run in the separate allensdk environment (`make allen-env`, `.venv-allen`), which
cannot hold jax: nothing here imports jax or flax, and allensdk itself is imported only inside the
functions that need it, so the pure-python parts can be imported and tested from the main venv.

- `download`: `python -m quantformer_jax.allen.download --cache-dir DIR [...]` fetches experiment
  NWB files into an allensdk-layout cache and lists what a cache holds (offline).
- `crosscheck`: compares allensdk's reader with `quantformer_jax.data.nwb.load_experiment` on
  simulated files.
"""
