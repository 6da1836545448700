"""quantformer_jax: QuantFormer (VQ tokenizer + neuron-token transformer) in JAX/Flax.

Importing the package is cheap and does not import jax, so the data tools (and the allensdk
environment, which cannot hold jax) can use `quantformer_jax.constants` and `quantformer_jax.data`.
"""

__version__ = "0.1.0"
