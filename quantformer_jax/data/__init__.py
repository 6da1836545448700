"""Data layer: Brain Observatory NWB reading, simulation, trial windows, datasets and batching.

Nothing in this package imports jax: it must also run inside the separate allensdk environment.
"""
