"""Tests for training/losses.py: VQ loss gradient semantics, masked/padded means, focal loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantformer_jax.models import vector_quantizer as vq
from quantformer_jax.training import losses

K, D, M, L, P = 8, 4, 3, 5, 6
NU = 0.2


def _key(seed: int) -> jax.Array:
    # The cheap-to-compile "rbg" PRNG: compilation dominates these tiny tests' runtime.
    return jax.random.key(seed, impl="rbg")


def _normal(shape: tuple[int, ...], seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def setup():
    module = vq.VectorQuantizer(codebook_size=K, dim=D)
    qparams = module.init(_key(0), jnp.zeros((1, D)))["params"]
    z_e = _normal((M, L, D), 1)
    patches = _normal((M, L, P), 2)
    return module, qparams, z_e, patches


def _vq_only_loss(module, beta, vq_loss, row_valid=None):
    """Loss as a function of (z_e, codebook params), with a fixed perfect reconstruction."""

    def f(z_e, qparams, patches):
        q = module.apply({"params": qparams}, z_e)
        outputs = {"recon": patches, "z_e": z_e, "z_q": q["z_q"], "z_q_raw": q["z_q_raw"]}
        return losses.tokenizer_losses(
            outputs, patches, None, row_valid, beta=beta, vq_loss=vq_loss
        )[0]

    return jax.jit(jax.grad(f, argnums=(0, 1)))


def _scatter(codes, values):
    out = np.zeros((K, D), np.float32)
    np.add.at(out, np.asarray(codes).reshape(-1), np.asarray(values).reshape(-1, D))
    return out


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_reference_vq_gradients(setup, beta):
    module, qparams, z_e, patches = setup
    g_z, g_q = _vq_only_loss(module, beta, "reference")(z_e, qparams, patches)
    q = module.apply({"params": qparams}, z_e)
    diff = np.asarray(q["z_q_raw"] - z_e)  # z_q - z_e
    n = diff.size
    # Encoder: vq pushes away (+2(z_q - z_e)/n through the identity), commit pulls with beta:
    # net (1 - beta) * 2 (z_q - z_e) / n, exactly zero at beta = 1.
    np.testing.assert_allclose(g_z, (1 - beta) * 2 * diff / n, atol=1e-6)
    if beta == 1.0:
        assert np.abs(np.asarray(g_z)).max() < 1e-7
    else:
        assert np.abs(np.asarray(g_z)).max() > 1e-4
    # Codebook: nu x the textbook codebook gradient (affine scale = 0 at init).
    np.testing.assert_allclose(g_q["codebook"], NU * _scatter(q["codes"], 2 * diff / n), atol=1e-6)


def test_textbook_vq_gradients(setup):
    module, qparams, z_e, patches = setup
    beta = 0.25
    g_z, g_q = _vq_only_loss(module, beta, "textbook")(z_e, qparams, patches)
    q = module.apply({"params": qparams}, z_e)
    diff = np.asarray(q["z_q_raw"] - z_e)
    n = diff.size
    np.testing.assert_allclose(g_z, -beta * 2 * diff / n, atol=1e-6)  # commitment only
    np.testing.assert_allclose(g_q["codebook"], _scatter(q["codes"], 2 * diff / n), atol=1e-6)


def test_reference_values_and_total(setup):
    _, _, z_e, patches = setup
    z_q = z_e + 0.5
    recon = patches + 1.0
    mask = jnp.zeros((M, L), bool).at[:, 0].set(True)
    outputs = {"recon": recon, "z_e": z_e, "z_q": z_q, "z_q_raw": z_q}
    total, terms = losses.tokenizer_losses(outputs, patches, mask, None, beta=2.0)
    assert float(terms["recon_loss"]) == pytest.approx(1.0)
    assert float(terms["masked_recon_loss"]) == pytest.approx(1.0)
    assert float(terms["vq_loss"]) == pytest.approx(0.25)
    assert float(terms["commit_loss"]) == pytest.approx(0.25)
    assert float(total) == pytest.approx(1.0 + 0.25 + 2.0 * 0.25 + 1.0)
    with pytest.raises(ValueError, match="vq_loss"):
        losses.tokenizer_losses(outputs, patches, mask, None, beta=1.0, vq_loss="bogus")


def test_only_masked_patches_enter_the_masked_loss(setup):
    _, _, z_e, patches = setup
    mask = np.zeros((M, L), bool)
    mask[0, 1] = mask[2, 3] = True
    err = np.zeros((M, L, P), np.float32)
    err[0, 1] = 2.0  # masked patch, squared error 4
    err[2, 3, :3] = 1.0  # masked patch, mean squared error 0.5
    err[1, 0] = 10.0  # unmasked patch: must not count
    outputs = {"recon": patches + err, "z_e": z_e, "z_q": z_e, "z_q_raw": z_e}
    _, terms = losses.tokenizer_losses(outputs, patches, jnp.asarray(mask), None, beta=1.0)
    assert float(terms["masked_recon_loss"]) == pytest.approx((4.0 + 0.5) / 2)
    assert float(terms["recon_loss"]) == pytest.approx(float(np.mean(err**2)))


def test_padded_rows_are_ignored_and_all_invalid_is_finite(setup):
    _, _, z_e, patches = setup
    mask = jnp.ones((M, L), bool).at[:, :2].set(False)
    row_valid = jnp.array([True, True, False])
    outputs = {"recon": patches * 0.5, "z_e": z_e, "z_q": z_e * 0.9, "z_q_raw": z_e * 0.9}
    _, a = losses.tokenizer_losses(outputs, patches, mask, row_valid, beta=1.0)
    junk = {k: v.at[2].set(1e6) for k, v in outputs.items()}
    _, b = losses.tokenizer_losses(junk, patches, mask, row_valid, beta=1.0)
    for key in a:
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6)
    _, none = losses.tokenizer_losses(outputs, patches, mask, jnp.zeros(M, bool), beta=1.0)
    assert all(float(v) == 0.0 for v in none.values())


def _manual_weighted_ce(logits, labels, weights):
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    total, count = 0.0, 0
    for idx in np.ndindex(labels.shape):
        y = labels[idx]
        if y == -100:
            continue
        logp = logits[idx] - np.log(np.exp(logits[idx]).sum())
        total += weights[y] * -logp[y]
        count += 1
    return total / count


def test_focal_loss_gamma0_is_the_plain_mean_weighted_ce():
    logits = _normal((2, 3, 4, 5), 0)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 5, (2, 3, 4)), jnp.int32)
    labels = labels.at[:, :, :2].set(-100)  # source positions
    weights = np.array([0.5, 1.0, 2.0, 4.0, 0.25], np.float32)
    got = float(losses.focal_loss(logits, labels, weights, gamma=0.0))
    assert got == pytest.approx(_manual_weighted_ce(logits, labels, weights), rel=1e-5)
    # not torch's weighted mean (normalised by the sum of the weights)
    valid = np.asarray(labels) != -100
    w_sum = weights[np.asarray(labels)[valid]].sum()
    assert got != pytest.approx(got * valid.sum() / w_sum, rel=1e-3)
    # cross_entropy = unweighted
    ce = float(losses.cross_entropy(logits, labels))
    assert ce == pytest.approx(_manual_weighted_ce(logits, labels, np.ones(5)), rel=1e-5)
    # the extra validity mask drops the second window
    half = float(
        losses.cross_entropy(logits, labels, valid=jnp.array([True, False])[:, None, None])
    )
    assert half == pytest.approx(_manual_weighted_ce(logits[:1], labels[:1], np.ones(5)), rel=1e-5)


def test_focal_loss_gamma_and_gradients_are_finite():
    logits = jnp.array([[10.0, -10.0], [0.3, 0.1], [0.0, 0.0]])
    labels = jnp.array([0, 1, -100])
    p = jax.nn.softmax(logits, -1)
    expected = np.mean(
        [(1 - p[0, 0]) ** 2 * -np.log(p[0, 0]), (1 - p[1, 1]) ** 2 * -np.log(p[1, 1])]
    )
    assert float(losses.focal_loss(logits, labels, gamma=2.0)) == pytest.approx(
        float(expected), rel=1e-4
    )
    grad = jax.grad(lambda x: losses.focal_loss(x, labels, jnp.ones(2)))(logits)
    assert np.isfinite(np.asarray(grad)).all()
    assert float(losses.focal_loss(logits, jnp.full((3,), -100))) == 0.0


def test_masked_mse():
    pred = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    target = jnp.zeros((2, 2))
    assert float(losses.masked_mse(pred, target)) == pytest.approx(7.5)
    assert float(losses.masked_mse(pred, target, jnp.array([[True], [False]]))) == 2.5
    assert float(losses.masked_mse(pred, target, jnp.zeros((2, 2), bool))) == 0.0
