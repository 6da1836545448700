"""Gradient accumulation over row chunks inside one step: the same update, a smaller working set.

A pretraining batch is M independent neuron-rows (1024 at the paper's size: 10240 tokens). One
forward + backward over all of them streams ~600 MB of activations through memory, far more than
the CPU's caches hold. Running the same step as a loop over row chunks (`config.training.
chunk_rows`, e.g. 4 x 256 rows) keeps each chunk's activations cache-sized; the gradients of the
chunks are summed, which is the gradient of the whole batch because every loss term is a sum over
rows divided by a denominator computed once for the whole batch (`losses.
tokenizer_loss_denominators`). Values agree with the unchunked step to float32 rounding (the sums
are reassociated), not bit for bit; the chunked step is itself deterministic, so resumed runs
stay bit-exact (benchmarks/README.md has the timings).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
AUTO = -1  # config.training.chunk_rows = -1: CPU_CHUNK_ROWS on CPU, no chunking on accelerators
CPU_CHUNK_ROWS = 256  # ~2.5k tokens: 5 MB of feed-forward activations per chunk


def resolve_chunk_rows(chunk_rows: int, backend: str | None = None) -> int:
    """`config.training.chunk_rows` as a row count: AUTO becomes `CPU_CHUNK_ROWS` on the CPU
    backend and 0 (one pass) on GPUs and TPUs, whose throughput needs the whole batch at once.

    Raises:
        ValueError: a negative value other than AUTO.
    """
    if chunk_rows == AUTO:
        backend = backend or jax.default_backend()
        return CPU_CHUNK_ROWS if backend == "cpu" else 0
    if chunk_rows < 0:
        raise ValueError(
            f"config.training.chunk_rows={chunk_rows}: expected rows per chunk (> 0), 0 (off) or "
            f"{AUTO} (auto)"
        )
    return chunk_rows


def num_chunks(rows: int, chunk_rows: int) -> int:
    """How many equal chunks of at most ~`chunk_rows` rows split `rows` (1 = no chunking).

    The smallest n >= rows / chunk_rows that divides `rows`, so every chunk has the same shape
    (one compiled loop body). `chunk_rows` <= 0 turns chunking off.
    """
    if chunk_rows <= 0 or rows <= chunk_rows:
        return 1
    n = -(-rows // chunk_rows)
    while rows % n:
        n += 1
    return n


def chunked_value_and_grad(
    loss_fn: Callable[..., tuple[jax.Array, tuple[PyTree, PyTree]]],
    params: PyTree,
    inputs: PyTree,
    chunks: int,
) -> tuple[jax.Array, PyTree, PyTree, PyTree]:
    """Sum over row chunks of `loss_fn`, its gradient, and its auxiliary outputs.

    Args:
        loss_fn: `(params, chunk_inputs, chunk_index) -> (loss, (summed, rows))`: `summed` is
            a pytree of values added up over chunks (loss terms already divided by whole-batch
            denominators), `rows` a pytree of per-row arrays (leading dim = the chunk's rows)
            concatenated back into whole-batch order. `chunk_index` is an int32 scalar (0 when
            `chunks` is 1), e.g. to fold into a dropout key.
        params: what the gradient is taken with respect to.
        inputs: pytree of per-row arrays, all with the same leading dimension M.
        chunks: number of chunks; must divide M. 1 calls `loss_fn` once on everything.

    Returns:
        (loss, grads, summed, rows) for the whole batch.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if chunks == 1:
        (loss, (summed, rows)), grads = grad_fn(params, inputs, jnp.zeros((), jnp.int32))
        return loss, grads, summed, rows
    sizes = {x.shape[0] for x in jax.tree.leaves(inputs)}
    if len(sizes) != 1 or next(iter(sizes)) % chunks:
        raise ValueError(f"chunked_value_and_grad: row counts {sorted(sizes)} vs {chunks} chunks")
    split = jax.tree.map(lambda x: x.reshape((chunks, x.shape[0] // chunks) + x.shape[1:]), inputs)

    def body(carry, xs):
        index, chunk = xs
        (loss, (summed, rows)), grads = grad_fn(params, chunk, index)
        return jax.tree.map(jnp.add, carry, (loss, grads, summed)), rows

    first = jax.tree.map(lambda x: x[0], split)
    shapes = jax.eval_shape(grad_fn, params, first, jnp.zeros((), jnp.int32))
    (loss_shape, (summed_shape, _)), grads_shape = shapes
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), (loss_shape, grads_shape, summed_shape)
    )
    (loss, grads, summed), rows = jax.lax.scan(
        body, zeros, (jnp.arange(chunks, dtype=jnp.int32), split)
    )
    rows = jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), rows)
    return loss, grads, summed, rows
