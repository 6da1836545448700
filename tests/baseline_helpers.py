"""Shared helpers for the transformer-baseline tests (test_informer/autoformer/crossformer).

XLA:CPU compiles one threefry kernel per parameter initialiser (about 0.1-0.2 s of CPU each,
and these models have 50-300 leaves), so the behavioural tests fill variables from numpy
instead of compiling `model.init`; the torch-like initial distributions are tested on the
layers themselves (test_informer.py). Shapes are checked with `jax.eval_shape` (tracing only).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

SOURCE, HORIZON = 96, 64


def make_inputs(batch: int, neurons: int, *, seed: int = 0, future: bool = True) -> dict:
    """Random float32 inputs: src [B, N, 96], stim [B, 4] and (optionally) future [B, N, 64]."""
    rng = np.random.default_rng(seed)
    inputs = {
        "src": rng.normal(size=(batch, neurons, SOURCE)).astype(np.float32),
        "stim": rng.uniform(size=(batch, 4)).astype(np.float32),
    }
    if future:
        inputs["future"] = rng.normal(size=(batch, neurons, HORIZON)).astype(np.float32)
    return inputs


def fast_variables(model: nn.Module, inputs: dict, *, seed: int = 0) -> dict:
    """Variables shaped like `model.init(...)`, params ~ U(-0.3, 0.3), BatchNorm stats (0, 1)."""
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.PRNGKey(0), inputs
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return np.full(leaf.shape, 1.0 if "var" in name else 0.0, leaf.dtype)
        return rng.uniform(-0.3, 0.3, leaf.shape).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def output_shapes(model: nn.Module, inputs: dict, *, train: bool) -> dict:
    """Output shapes of `model.apply` by tracing only (train mode: dropout RNG, batch stats)."""
    variables = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.PRNGKey(0), inputs
    )
    if train:
        apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
        out, _ = jax.eval_shape(apply, variables, inputs, rngs={"dropout": jax.random.PRNGKey(1)})
    else:
        out = jax.eval_shape(functools.partial(model.apply, train=False), variables, inputs)
    return {key: value.shape for key, value in out.items()}


def uses_input(model: nn.Module, variables: dict, inputs: dict, key: str, *, train: bool) -> bool:
    """Whether any traced operation of `model.apply` consumes `inputs[key]` (jaxpr data flow)."""

    def run(value):
        kwargs = {"rngs": {"dropout": jax.random.PRNGKey(1)}, "mutable": ["batch_stats"]}
        return model.apply(
            variables, {**inputs, key: value}, train=train, **(kwargs if train else {})
        )

    closed = jax.make_jaxpr(run)(inputs[key])
    (var,) = closed.jaxpr.invars
    # A use inside a nested call shows up as an operand of that call's equation.
    return any(var in eqn.invars for eqn in closed.jaxpr.eqns) or var in closed.jaxpr.outvars
