"""TrainState: the pytree every training step threads through, and its update rules.

A `TrainState` holds exactly what a step needs and what a checkpoint stores: the update count,
the trainable parameters, the optimizer state, the collections that gradients never touch
(`model_state`, e.g. the tokenizer's `vq_state` dead-code counters) and one base PRNG key.
The optimizer itself is not part of the state: steps receive it as a keyword argument, so the
state stays plain data that orbax can save and restore into an abstract target.

Randomness: a step never carries a key forward. It derives its keys from
`fold_in(state.rng, state.step)`, so a job restarted at step N draws the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    Attributes:
        step: int32 scalar, the number of optimizer updates applied so far.
        params: the trainable parameters ('params' collection).
        opt_state: the optax state of `tx` for `params`.
        model_state: the non-gradient variable collections, e.g. `{'vq_state': {...}}`; updated
            only through `.replace` by the step that owns them.
        rng: raw uint32 [2] base key (never split in place; see `step_keys`).
    """

    step: jax.Array
    params: PyTree
    opt_state: optax.OptState
    model_state: PyTree
    rng: jax.Array

    @classmethod
    def create(
        cls,
        *,
        params: PyTree,
        tx: optax.GradientTransformation,
        rng: jax.Array,
        model_state: PyTree | None = None,
    ) -> TrainState:
        """Builds the state at step 0.

        Args:
            params: initial trainable parameters.
            tx: the optimizer whose state is initialised for `params`.
            rng: the base key of the training randomness (a raw uint32 [2] key).
            model_state: non-gradient collections (`{}` when the model has none).

        Returns:
            A TrainState with `step == 0`.
        """
        return cls(
            step=jnp.asarray(0, jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=dict(model_state or {}),
            rng=jnp.asarray(rng, jnp.uint32),
        )

    def step_keys(self, names: Sequence[str]) -> dict[str, jax.Array]:
        """Returns one independent key per name for this step: split(fold_in(rng, step)).

        The keys depend only on (rng, step), so the same step of a resumed run draws the same
        random numbers as the uninterrupted run.
        """
        step_key = jax.random.fold_in(self.rng, self.step)
        return dict(zip(names, jax.random.split(step_key, len(names)), strict=True))

    def apply_gradients(
        self, grads: PyTree, *, tx: optax.GradientTransformation
    ) -> tuple[TrainState, PyTree]:
        """Applies one optimizer update and increments `step`.

        Args:
            grads: gradients with the structure of `params` (already averaged over devices).
            tx: the optimizer the state was created with.

        Returns:
            (new state, the updates added to the parameters) - the updates feed `l2_updates`.
        """
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        new_state = self.replace(step=self.step + 1, params=params, opt_state=opt_state)
        return new_state, updates


def norm_metrics(
    *, grads: PyTree, params: PyTree, updates: PyTree, learning_rate: jax.Array
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The optimisation health scalars logged every step, as (value, 1) sum/count pairs."""
    one = jnp.ones((), jnp.float32)
    return {
        "l2_grads": (optax.tree.norm(grads), one),
        "l2_params": (optax.tree.norm(params), one),
        "l2_updates": (optax.tree.norm(updates), one),
        "learning_rate": (jnp.asarray(learning_rate, jnp.float32), one),
    }


def param_count(params: PyTree) -> int:
    """Number of scalars in a parameter tree (for logs and the checkpoint meta)."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def split_variables(variables: Mapping[str, PyTree]) -> tuple[PyTree, dict[str, PyTree]]:
    """Splits `model.init` output into ('params', every other collection)."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables
