"""Tests of `data/noise_ceiling.py`: noise statistics and the Pearson ceiling of code recon."""

import numpy as np
import pytest
from scipy import signal
from scipy.cluster import vq

from quantformer_jax.data import noise_ceiling, schedule, simulate

SMALL = schedule.SessionSpec(
    dg_repeats=2, nm1_frames=30, nm3_frames=60, spont_frames=3000, gap_frames=60, lead_frames=100
)


def test_noise_sd_and_nu_of_white_noise():
    rng = np.random.default_rng(0)
    x = 0.05 * rng.standard_normal((4, 50_000))
    assert np.allclose(noise_ceiling.noise_sd(x), 0.05, rtol=0.03)
    # White noise of SD sigma at 30 Hz: nu = 100 * 0.6745 * sqrt(2) * sigma / sqrt(30).
    expected = 100 * 0.6745 * np.sqrt(2) * 0.05 / np.sqrt(30)
    assert np.allclose(noise_ceiling.noise_level_nu(x), expected, rtol=0.03)
    assert np.allclose(noise_ceiling.noise_level_nu(x, 120.0), expected / 2, rtol=0.03)
    with pytest.raises(ValueError, match="2 frames"):
        noise_ceiling.noise_sd(np.zeros((3, 1)))


def test_noise_sd_ignores_sparse_calcium_transients():
    rng = np.random.default_rng(1)
    spikes = (rng.random(60_000) < 1 / 30).astype(float)  # 1 Hz
    calcium = signal.lfilter([0.5], [1, -0.92], spikes)  # GCaMP6f-like decay, 0.5 dF/F per spike
    x = calcium + 0.05 * rng.standard_normal(calcium.shape)
    assert x.std() > 3 * 0.05  # the signal dominates the variance ...
    est = noise_ceiling.noise_sd(x)  # ... but moves the estimate by ~10 % only (decay slopes)
    assert 0.05 <= est <= 0.05 * 1.15


def test_simulated_noise_level_is_in_the_documented_allen_range():
    content, truth, _, _ = simulate.simulate_experiment(0, 20, SMALL, seed=5)
    s0, s1 = content.stimuli["spontaneous_stimulus"]["frame_duration"][:2, 0].astype(int)
    nu = noise_ceiling.noise_level_nu(content.dff[:, s0:s1])
    # ALLEN_FORMAT.md 3.5: per-frame dF/F SD 0.03-0.2 in real Allen data, i.e. nu ~ 0.5-3.5.
    assert 0.5 <= np.median(nu) <= 3.5
    # The estimate recovers the simulator's per-cell noise level (baseline dF/F SD).
    sd = noise_ceiling.noise_sd(content.dff[:, s0:s1])
    assert np.median(sd / truth["cell_noise_dff_sd"]) == pytest.approx(1.0, abs=0.15)


def test_pearson_ceiling_of_white_noise_and_of_clean_signals():
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((2000, 160))
    r = noise_ceiling.pearson_ceiling(noise, 1.0, num_tokens=10, codebook_size=256)
    # 80 bits for 160 white samples: MSE >= 2^-1, so r <= sqrt(1/2) (up to the sample variance).
    assert r.mean() == pytest.approx(np.sqrt(0.5), abs=0.01)
    more = noise_ceiling.pearson_ceiling(noise, 1.0, num_tokens=10, codebook_size=2**16)
    assert more.mean() > r.mean()
    charged = noise_ceiling.pearson_ceiling(noise, 1.0, 10, 256, extra_bits=80)
    assert charged.mean() == pytest.approx(np.sqrt(0.75), abs=0.01)
    t = np.arange(160)
    clean = np.sin(2 * np.pi * t / 40)[None, :] + 0.01 * rng.standard_normal((5, 160))
    assert np.all(noise_ceiling.pearson_ceiling(clean, 0.01, 10, 256) > 0.999)
    assert noise_ceiling.pearson_ceiling(np.ones((1, 160)), 0.1, 10, 256)[0] == 0.0
    with pytest.raises(ValueError, match="codebook_size"):
        noise_ceiling.pearson_ceiling(noise, 1.0, 10, 1)


def test_a_patch_vector_quantizer_stays_below_the_ceiling():
    """k-means codes of 16-frame patches (10 codes of 4 bits per white-noise row) cannot beat the
    bound, and get within reach of it: the bound is not vacuous."""
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((3000, 160))
    patches = rows.reshape(-1, 16)
    codebook, _ = vq.kmeans2(patches[:20_000], 16, seed=4, minit="++", iter=30)
    codes, _ = vq.vq(patches, codebook)
    recon = codebook[codes].reshape(rows.shape)
    rc, xc = recon - recon.mean(1, keepdims=True), rows - rows.mean(1, keepdims=True)
    r = (rc * xc).sum(1) / np.sqrt((rc * rc).sum(1) * (xc * xc).sum(1))
    ceiling = noise_ceiling.pearson_ceiling(rows, 1.0, num_tokens=10, codebook_size=16)
    assert r.mean() < ceiling.mean()
    assert r.mean() > 0.7 * ceiling.mean()


def test_cli_prints_noise_and_ceilings(mini_observatory, capsys):
    assert (
        noise_ceiling.main(["--cache-dir", str(mini_observatory), "--codebook-sizes", "256"]) == 0
    )
    out = capsys.readouterr().out
    assert "nu median" in out
    # A simulated cache: the ceiling from the estimated and from the ground-truth noise level.
    assert "K=   256 (noise robust): Pearson ceiling all rows" in out
    assert "K=   256 (noise truth): Pearson ceiling all rows" in out
