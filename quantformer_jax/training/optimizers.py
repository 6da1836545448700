"""Optimizers built from `config.optimizer`: torch-style Adam with coupled L2 and frozen leaves.

The original code uses `torch.optim.Adam(params, lr, weight_decay=wd)`, whose weight decay is an
L2 term added to the gradient *before* the Adam moments (coupled), unlike AdamW's decoupled
decay. We reproduce that with `add_decayed_weights` placed before `scale_by_adam`
(REFERENCE.md F18). Frozen parameters (finetuning's pretrained encoder) get exactly zero updates
and no decay, through `optax.multi_transform` with `set_to_zero`. The learning rate is constant:
the original schedulers never stepped on a real metric (P6, F12, B7).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = object

_TRAINABLE = "trainable"
_FROZEN = "frozen"


def learning_rate_fn(opt_cfg: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
    """The learning rate as a function of the step (constant; logged by every train step)."""
    lr = float(opt_cfg.learning_rate)
    if lr <= 0:
        raise ValueError(f"config.optimizer.learning_rate must be > 0, got {lr}")
    return lambda step: jnp.full((), lr, jnp.float32)


def _trainable_chain(opt_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    if opt_cfg.name != "adam":
        raise ValueError(f"config.optimizer.name: unknown optimizer {opt_cfg.name!r}; known: adam")
    parts = []
    # Clipping first: torch's clip_grad_norm_ acts on the raw gradients, before the L2 term.
    if opt_cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(opt_cfg.grad_clip_norm)))
    if opt_cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(float(opt_cfg.weight_decay)))
    parts.append(
        optax.scale_by_adam(
            b1=float(opt_cfg.b1), b2=float(opt_cfg.b2), eps=float(opt_cfg.get("eps", 1e-8))
        )
    )
    parts.append(optax.scale_by_learning_rate(learning_rate_fn(opt_cfg)))
    return optax.chain(*parts)


def create_optimizer(
    opt_cfg: ml_collections.ConfigDict, *, trainable: PyTree | None = None
) -> optax.GradientTransformation:
    """Builds the optimizer for `config.optimizer`.

    Args:
        opt_cfg: `config.optimizer` (name, learning_rate, b1, b2, weight_decay, grad_clip_norm).
        trainable: optional pytree of bools with the structure of the params; False leaves are
            frozen (zero update, no weight decay, excluded from clipping). None = all trainable.

    Returns:
        An optax GradientTransformation.

    Raises:
        ValueError: for an unknown `config.optimizer.name` or a non-positive learning rate.
    """
    inner = _trainable_chain(opt_cfg)
    if trainable is None:
        return inner
    labels = jax.tree.map(lambda t: _TRAINABLE if t else _FROZEN, trainable)
    return optax.multi_transform({_TRAINABLE: inner, _FROZEN: optax.set_to_zero()}, labels)


def trainable_mask(params: PyTree, frozen_prefixes: Sequence[str]) -> PyTree:
    """A bool pytree marking leaves whose '/'-joined path starts with a frozen prefix as False.

    Example: `trainable_mask(params, ['encoder', 'vq/codebook'])`.

    Raises:
        ValueError: if a prefix matches no parameter (a typo would otherwise train everything).
    """
    prefixes = [p.strip("/") for p in frozen_prefixes]
    used = set()

    def is_trainable(path, leaf) -> bool:
        del leaf
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "/"):
                used.add(prefix)
                return False
        return True

    mask = jax.tree_util.tree_map_with_path(is_trainable, params)
    unused = sorted(set(prefixes) - used)
    if unused:
        raise ValueError(f"frozen parameter prefixes match no parameter: {unused}")
    return mask
