"""Gradient accumulation over row chunks (training/accumulation.py) and the chunked pretraining
step: the same loss, gradients, metrics and update as one pass over the whole batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import pretrain as pretrain_config
from quantformer_jax.training import accumulation, optimizers, pretrain


@pytest.mark.parametrize(
    "rows, chunk_rows, expected",
    [(1024, 256, 4), (1536, 256, 6), (1000, 256, 4), (1030, 256, 5), (256, 256, 1),
     (100, 256, 1), (1024, 0, 1), (7, 2, 7)],
)  # fmt: skip
def test_num_chunks_divides_the_rows(rows, chunk_rows, expected):
    n = accumulation.num_chunks(rows, chunk_rows)
    assert n == expected and rows % n == 0


def _toy_loss(params, rows, index):
    pred = jnp.tanh(rows["x"] @ params["w"]) + params["b"]
    sq = jnp.square(pred - rows["y"]).sum(-1) * rows["valid"]
    loss = jnp.sum(sq) / 20.0  # a whole-batch denominator
    return loss, ({"sq": loss, "index": index.astype(jnp.float32)}, {"pred": pred})


def test_chunked_value_and_grad_equals_one_pass():
    rng = np.random.RandomState(0)
    params = {"w": jnp.asarray(rng.randn(3, 2), jnp.float32), "b": jnp.ones(2)}
    inputs = {"x": rng.randn(24, 3).astype(np.float32), "y": rng.randn(24, 2).astype(np.float32),
              "valid": (np.arange(24) < 20).astype(np.float32)}  # fmt: skip
    loss1, grads1, summed1, rows1 = accumulation.chunked_value_and_grad(
        _toy_loss, params, inputs, 1
    )
    loss4, grads4, summed4, rows4 = jax.jit(
        lambda p, i: accumulation.chunked_value_and_grad(_toy_loss, p, i, 4)
    )(params, inputs)
    np.testing.assert_allclose(loss4, loss1, rtol=1e-6)
    np.testing.assert_allclose(summed4["sq"], summed1["sq"], rtol=1e-6)
    assert float(summed4["index"]) == 0 + 1 + 2 + 3  # chunk indices 0..3, summed
    np.testing.assert_allclose(rows4["pred"], rows1["pred"], rtol=1e-6)  # whole-batch order
    for a, b in zip(jax.tree.leaves(grads4), jax.tree.leaves(grads1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="5 chunks"):
        accumulation.chunked_value_and_grad(_toy_loss, params, inputs, 5)


def test_chunked_pretraining_step_equals_the_unchunked_step():
    """Padded rows, a random mask and dead-code replacement: one chunk or four, same update."""
    config = pretrain_config.get_config("runlocal")
    model = pretrain.create_model(config)
    tx = optax.sgd(1.0)  # the update is minus the gradient (Adam would amplify tiny ones)
    init_key, _, train_key = pretrain.seeds(0)
    start = jax.device_get(pretrain.init_state(model, tx, init_key, train_key))
    # Counters at 1: codes unused in this step are re-seeded from the (concatenated) chunks.
    start = start.replace(model_state=jax.tree.map(lambda c: c * 0 + 1, start.model_state))
    rng = np.random.RandomState(1)
    rows = 64
    batch = {
        "x": rng.randn(rows, 160).astype(np.float32),
        "row_valid": np.arange(rows) < 52,
        "labels": (np.arange(rows) % 2).astype(np.int32),
    }
    results = {}
    for chunk_rows in (0, 16):
        step = jax.jit(
            lambda s, b, c=chunk_rows: pretrain.train_step(
                s, b, model=model, tx=tx, chunk_rows=c,
                settings=pretrain.LossSettings.from_config(config.model),
                learning_rate_fn=optimizers.learning_rate_fn(config.optimizer),
            )
        )  # fmt: skip
        results[chunk_rows] = jax.device_get(step(start, batch))
    (ref_state, ref), (state, out) = results[0], results[16]
    for name in ("loss", "recon_loss", "masked_recon_loss", "vq_loss", "commit_loss"):
        np.testing.assert_allclose(out[name][0], ref[name][0], rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(out["code_hist"], ref["code_hist"])
    assert float(out["replaced_codes"][0]) == float(ref["replaced_codes"][0]) > 0
    np.testing.assert_allclose(out["l2_grads"][0], ref["l2_grads"][0], rtol=1e-5)
    counts = [s.model_state["vq_state"]["quantizer"]["counts"] for s in (state, ref_state)]
    np.testing.assert_array_equal(*counts)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_auto_chunk_rows_chunks_on_cpu_only():
    assert accumulation.resolve_chunk_rows(-1, "cpu") == accumulation.CPU_CHUNK_ROWS
    assert accumulation.resolve_chunk_rows(-1, "gpu") == 0
    assert accumulation.resolve_chunk_rows(128, "gpu") == 128
    assert accumulation.resolve_chunk_rows(0, "cpu") == 0
    with pytest.raises(ValueError, match="config.training.chunk_rows=-3"):
        accumulation.resolve_chunk_rows(-3)
