"""Generative model of Allen-like GCaMP6f recordings: tuning -> rates -> spikes -> fluorescence.

The chain follows ALLEN_FORMAT.md section 5:
1. Cells: a large unresponsive class, weakly and strongly direction/TF tuned cells (double von
   Mises over direction, log-Gaussian over TF), within-trial adaptation, offset responses, F1
   modulation, frame-locked natural-movie responses, log-normal trial-to-trial gain.
2. Behaviour: running bouts (speed > 1 cm/s modulates gain) and a slow shared arousal state that
   raises baseline rates and evoked gain, so the pre-onset frames predict the upcoming response.
3. Spikes: rates pass a soft 100 Hz ceiling (R tanh(x / R)); per-frame Poisson counts (the
   binned inhomogeneous Poisson process for a piecewise-constant rate) of burst events, each
   burst 1 + Poisson(lambda_b) spikes.
4. Calcium: double-exponential kernel (rise 20-50 ms, decay 0.35-0.45 s) as an AR(2) filter,
   0.05-0.2 dF/F per spike, saturating Hill-type nonlinearity f(x) = x / (1 + (x/d_max)^2)^(1/2).
5. Fluorescence: F_cell = F0 (1 + dF/F) * bleaching; neuropil = shared slow component + own noise;
   measured = F_cell + r * neuropil + shot noise (sigma ~ sqrt(F)); demixed = measured + small
   crosstalk; raw = demixed + more crosstalk (before demixing); corrected = demixed - r * the
   neuropil estimate (neuropil + white noise).
6. Stored dF/F: (F - B) / B with B a running median (180 s) of 1-s block means smoothed by a 100 s
   running mean: a fast stand-in for allensdk's windowed-mode baseline (mode over 180 s, mean over
   100 s); on sparse traces median and mode both sit at the resting level.

All arrays are float32 [n_cells, n_frames]; randomness comes only from the `rng` passed in.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

from quantformer_jax.constants import SAMPLING_RATE_HZ
from quantformer_jax.data.schedule import DG_TRIAL_FRAMES, Schedule, dg_frame_index

FPS = SAMPLING_RATE_HZ
RUN_THRESHOLD_CM_S = 1.0
MAX_RATE_HZ = 100.0  # soft ceiling of firing rates: rate = R tanh(drive / R)
LARGE_POISSON_MEAN = 30.0
CLASS_NAMES = ("unresponsive", "weak", "responsive")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def sample_cells(
    rng: np.random.Generator, n: int, responsive_fraction: float, movie_fraction: float
) -> dict[str, np.ndarray]:
    """Draws per-cell parameters (each a length-n array) for one field of view."""
    p_weak = 0.2
    cls = rng.choice(3, size=n, p=[1.0 - p_weak - responsive_fraction, p_weak, responsive_fraction])
    rmax = np.where(
        cls == 2,
        _log_uniform(rng, 2.0, 20.0, n),
        np.where(cls == 1, _log_uniform(rng, 0.5, 2.5, n), 0.0),
    )
    movie_resp = rng.random(n) < np.where(cls == 0, 0.5 * movie_fraction, movie_fraction)
    return {
        "response_class": cls.astype(np.int64),  # index into CLASS_NAMES
        "baseline_rate_hz": _log_uniform(rng, 0.1, 1.0, n),
        "peak_rate_hz": rmax,
        "pref_direction_deg": rng.uniform(0.0, 360.0, n),
        "direction_kappa": rng.uniform(1.0, 3.5, n),
        "opposite_peak_ratio": rng.uniform(0.0, 1.0, n),  # 0: direction selective, 1: orientation
        "pref_tf_hz": _log_uniform(rng, 1.0, 15.0, n),
        "tf_width_octaves": rng.uniform(0.7, 1.6, n),
        "latency_frames": rng.integers(2, 6, n),
        "sustained_fraction": rng.uniform(0.2, 0.9, n),
        "adaptation_frames": rng.uniform(5.0, 20.0, n),
        "offset_response": np.where(rng.random(n) < 0.2, rng.uniform(0.2, 0.8, n), 0.0),
        "f1_modulation": np.where(rng.random(n) < 0.3, rng.uniform(0.0, 0.8, n), 0.0),
        "trial_gain_sigma": rng.uniform(0.3, 0.8, n),
        "state_baseline_coupling": np.clip(rng.normal(0.4, 0.25, n), -0.2, 0.9),
        "state_gain_coupling": np.clip(rng.normal(0.3, 0.25, n), -0.3, 0.8),
        "running_modulation": np.clip(rng.normal(0.2, 0.4, n), -0.7, 2.0),
        "movie_responsive": movie_resp.astype(np.int64),
        "burst_lambda": rng.uniform(0.2, 1.0, n),
        "tau_decay_s": rng.uniform(0.35, 0.45, n),
        "tau_rise_s": rng.uniform(0.02, 0.05, n),
        "dff_per_spike": rng.uniform(0.05, 0.2, n),
        "dff_saturation": rng.uniform(2.0, 5.0, n),
        "f0": rng.uniform(100.0, 500.0, n),
        "neuropil_f0": rng.uniform(100.0, 150.0, n),
        "neuropil_weight": rng.uniform(0.5, 1.5, n),
        "neuropil_r": np.clip(rng.normal(0.7, 0.15, n), 0.0, 1.0),
        "noise_dff_sd": _log_uniform(rng, 0.03, 0.1, n),
        "bleach_fraction": rng.uniform(0.02, 0.15, n),
        "crosstalk_partner": (np.arange(n) + rng.integers(1, max(n, 2), n)) % max(n, 1),
        "crosstalk": rng.uniform(0.0, 0.05, n),
    }


def _ou(rng: np.random.Generator, n_frames: int, tau_s: float) -> np.ndarray:
    """Unit-variance Ornstein-Uhlenbeck process sampled at the frame rate."""
    g = np.exp(-1.0 / (tau_s * FPS))
    x = signal.lfilter([np.sqrt(1 - g * g)], [1.0, -g], rng.standard_normal(n_frames))
    return x.astype(np.float32)


def running_and_state(rng: np.random.Generator, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Running speed (cm/s, bouts of a two-state chain) and the standardised arousal state."""
    runner = rng.random() < 0.75  # some mice hardly run at all
    mean_rest, mean_run = (40.0, 15.0) if runner else (600.0, 5.0)
    running = np.zeros(n_frames, dtype=bool)
    t, state = 0, bool(rng.random() < 0.3)
    while t < n_frames:
        dur = int(rng.exponential((mean_run if state else mean_rest) * FPS)) + 1
        running[t : t + dur] = state
        t, state = t + dur, not state
    top_speed = rng.uniform(8.0, 30.0)
    smooth = ndimage.uniform_filter1d(running.astype(np.float32), int(FPS))
    speed = smooth * top_speed * np.clip(1 + 0.3 * _ou(rng, n_frames, 3.0), 0.2, None)
    speed = speed + 0.3 * rng.standard_normal(n_frames).astype(np.float32)  # encoder jitter
    # Arousal: a slow OU process plus running smoothed over ~5 s (not standardised on its own, so
    # rare short bouts of a mostly resting mouse stay small bumps, not huge excursions).
    g = np.exp(-1.0 / (5.0 * FPS))
    run_slow = signal.lfilter([1 - g], [1.0, -g], running.astype(np.float64))
    state_z = _ou(rng, n_frames, 30.0) + 1.5 * (run_slow - run_slow.mean())
    state_z = (state_z - state_z.mean()) / (state_z.std() + 1e-6)
    return speed.astype(np.float32), state_z.astype(np.float32)


def dg_tuning(cells: dict[str, np.ndarray], schedule: Schedule) -> np.ndarray:
    """[N, K] mean evoked peak rate (Hz) of each cell for each DG trial (0 for blank sweeps)."""
    theta = np.deg2rad(np.nan_to_num(schedule.dg_ori))[None, :]
    pref = np.deg2rad(cells["pref_direction_deg"])[:, None]
    kappa = cells["direction_kappa"][:, None]
    direction = np.exp(kappa * (np.cos(theta - pref) - 1)) + cells["opposite_peak_ratio"][
        :, None
    ] * np.exp(kappa * (np.cos(theta - pref - np.pi) - 1))
    log_tf = np.log2(np.nan_to_num(schedule.dg_tf, nan=1.0))[None, :]
    tf = np.exp(
        -0.5
        * ((log_tf - np.log2(cells["pref_tf_hz"])[:, None]) / cells["tf_width_octaves"][:, None])
        ** 2
    )
    rate = cells["peak_rate_hz"][:, None] * direction * tf
    return np.where(schedule.dg_blank[None, :] > 0, 0.0, rate)


def _trial_profile(cells: dict[str, np.ndarray]) -> np.ndarray:
    """[N, 90] within-trial time course: latency, adaptation, optional offset bump."""
    phase = np.arange(DG_TRIAL_FRAMES)[None, :] - cells["latency_frames"][:, None]
    on = (phase >= 0) & (phase < 60)
    s = cells["sustained_fraction"][:, None]
    adapt = s + (1 - s) * np.exp(-np.clip(phase, 0, None) / cells["adaptation_frames"][:, None])
    off_phase = phase - 60
    offset = cells["offset_response"][:, None] * np.exp(-np.clip(off_phase, 0, None) / 5.0)
    return np.where(on, adapt, np.where(off_phase >= 0, offset, 0.0)).astype(np.float32)


def _movie_profiles(
    rng: np.random.Generator, cells: dict[str, np.ndarray], length: int
) -> np.ndarray:
    """[N, length] frame-locked rate (Hz) of each cell for one movie: a few Gaussian bumps."""
    n = len(cells["f0"])
    frames = np.arange(length)[None, :]
    out = np.zeros((n, length), dtype=np.float32)
    n_bumps = 1 + rng.poisson(max(length / 300.0, 0.5), n)
    for i in np.flatnonzero(cells["movie_responsive"]):
        centers = rng.uniform(0, length, n_bumps[i])[:, None]
        widths = rng.uniform(2.0, 10.0, n_bumps[i])[:, None]
        amps = _log_uniform(rng, 2.0, 15.0, n_bumps[i])[:, None]
        out[i] = (amps * np.exp(-0.5 * ((frames - centers) / widths) ** 2)).sum(0)
    return out


def _lognormal_gain(rng: np.random.Generator, sigma: np.ndarray, k: int) -> np.ndarray:
    z = rng.standard_normal((len(sigma), k))
    return np.exp(sigma[:, None] * z - 0.5 * sigma[:, None] ** 2).astype(np.float32)


def firing_rates(
    rng: np.random.Generator,
    cells: dict[str, np.ndarray],
    schedule: Schedule,
    speed: np.ndarray,
    state_z: np.ndarray,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rates (Hz, float32 [N, T]) and the per-trial / per-repeat gains drawn on the way."""
    n, t_len = len(cells["f0"]), schedule.n_frames
    alpha = cells["state_baseline_coupling"][:, None].astype(np.float32)
    beta = cells["state_gain_coupling"][:, None].astype(np.float32)
    z = state_z[None, :]
    # In-place products: these [N, T] arrays dominate the simulator's time and memory.
    base = alpha * z
    base -= alpha**2 / 2
    np.exp(base, out=base)
    base *= cells["baseline_rate_hz"][:, None].astype(np.float32)
    running = ndimage.uniform_filter1d((speed > RUN_THRESHOLD_CM_S).astype(np.float32), int(FPS))
    state_gain = beta * z
    state_gain -= beta**2 / 2
    np.exp(state_gain, out=state_gain)
    run_gain = 1 + cells["running_modulation"][:, None].astype(np.float32) * running[None, :]
    state_gain *= np.clip(run_gain, 0.1, None, out=run_gain)
    del run_gain
    evoked = np.zeros((n, t_len), dtype=np.float32)
    # Drifting gratings: tuned amplitude x trial gain x time course x F1 modulation.
    trial_gain = _lognormal_gain(rng, cells["trial_gain_sigma"], schedule.num_trials)
    amp = (dg_tuning(cells, schedule) * trial_gain).astype(np.float32)
    frame, trial, phase = dg_frame_index(schedule)
    f1 = np.sin(2 * np.pi * np.nan_to_num(schedule.dg_tf)[trial] * phase / FPS) * (phase < 60)
    mod = 1 + cells["f1_modulation"][:, None].astype(np.float32) * f1[None, :].astype(np.float32)
    evoked[:, frame] = amp[:, trial] * _trial_profile(cells)[:, phase] * mod
    gains = {"dg_trial_gain": trial_gain}
    # Natural movies: reliable frame-locked bumps, scaled per repeat.
    for name, (movie_frame, frames) in schedule.movies.items():
        length = int(movie_frame.max()) + 1
        repeat = np.arange(len(frames)) // length
        g = _lognormal_gain(rng, cells["trial_gain_sigma"], int(repeat.max()) + 1)
        evoked[:, frames] = _movie_profiles(rng, cells, length)[:, movie_frame] * g[:, repeat]
        gains[f"{name}_repeat_gain"] = g
    evoked *= state_gain
    del state_gain
    evoked += base
    # Soft saturation: a neuron cannot fire faster than ~100 Hz however the gains stack up.
    np.clip(evoked, 0.0, None, out=evoked)
    evoked /= MAX_RATE_HZ
    np.tanh(evoked, out=evoked)
    evoked *= MAX_RATE_HZ
    return evoked, gains


def sparse_poisson(rng: np.random.Generator, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Poisson(lam) draws by inverse CDF, returned sparsely: (flat index, count >= 1).

    One uniform per entry; only the few entries with a count >= 1 walk further up the CDF. The
    counts of all other entries are 0.
    """
    u = rng.random(lam.shape, dtype=np.float32).reshape(-1)
    lam = lam.reshape(-1)
    idx = np.flatnonzero(u >= np.exp(-lam))  # entries with at least one event
    lam_a, u_a = lam[idx].astype(np.float64), u[idx].astype(np.float64)
    p = np.exp(-lam_a)
    cdf = p.copy()
    counts = np.zeros(idx.shape, dtype=np.int64)
    # Large means would walk far (and exp(-lam) underflows past ~745): draw those directly,
    # conditioned on >= 1 event by rejection.
    big = np.flatnonzero(lam_a > LARGE_POISSON_MEAN)
    for j in big:
        draw = 0
        while draw == 0:
            draw = rng.poisson(lam_a[j])
        counts[j] = draw
    active = np.flatnonzero(lam_a <= LARGE_POISSON_MEAN)
    lam_a, u_a, p, cdf = lam_a[active], u_a[active], p[active], cdf[active]
    k = 0
    while active.size:
        k += 1
        p *= lam_a / k
        cdf += p
        counts[active] = k
        more = u_a >= cdf
        active, lam_a, u_a, p, cdf = active[more], lam_a[more], u_a[more], p[more], cdf[more]
    return idx, counts


def spikes_from_rates(
    rng: np.random.Generator, rates: np.ndarray, burst_lambda: np.ndarray
) -> np.ndarray:
    """Per-frame spike counts uint8 [N, T]: Poisson burst events of 1 + Poisson(lambda_b) spikes."""
    lam_b = burst_lambda[:, None].astype(np.float32)
    idx, events = sparse_poisson(rng, rates / np.float32(FPS) / (1 + lam_b))
    rows = idx // rates.shape[1]
    counts = events + rng.poisson(burst_lambda[rows] * events)
    spikes = np.zeros(rates.shape, dtype=np.uint8)
    spikes.reshape(-1)[idx] = np.clip(counts, 0, 255)
    return spikes


def calcium_kernel_filter(tau_rise: float, tau_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """AR(2) (b, a) whose impulse response is the double exponential sampled mid-frame,

    h[k] = (g_d^(k+1/2) - g_r^(k+1/2)) / peak, normalised to a continuous-time peak of 1.
    """
    gd, gr = np.exp(-1 / (tau_decay * FPS)), np.exp(-1 / (tau_rise * FPS))
    t_peak = np.log(tau_decay / tau_rise) * tau_decay * tau_rise / (tau_decay - tau_rise)
    peak = np.exp(-t_peak / tau_decay) - np.exp(-t_peak / tau_rise)
    a_d, a_r = np.sqrt(gd), np.sqrt(gr)
    b = np.array([a_d - a_r, a_r * gd - a_d * gr]) / peak
    a = np.array([1.0, -(gd + gr), gd * gr])
    return b, a


def true_dff(spikes: np.ndarray, cells: dict[str, np.ndarray]) -> np.ndarray:
    """Noise-free dF/F float32 [N, T]: calcium kernel, per-spike amplitude, saturation."""
    out = np.empty(spikes.shape, dtype=np.float32)
    for i in range(spikes.shape[0]):
        b, a = calcium_kernel_filter(cells["tau_rise_s"][i], cells["tau_decay_s"][i])
        out[i] = signal.lfilter(b, a, spikes[i].astype(np.float64)) * cells["dff_per_spike"][i]
    dmax = cells["dff_saturation"][:, None].astype(np.float32)
    return out / np.sqrt(1 + (out / dmax) ** 2)


def fluorescence(
    rng: np.random.Generator, dff: np.ndarray, cells: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Raw, demixed and neuropil traces (float32 [N, T]) as the Allen pipeline would store them."""
    n, t_len = dff.shape
    col = {k: np.asarray(v, dtype=np.float32)[:, None] for k, v in cells.items()}
    t_s = (np.arange(t_len, dtype=np.float32) / FPS)[None, :]
    bleach = 1 - col["bleach_fraction"] * (1 - np.exp(-t_s / 1800.0))
    f_cell = col["f0"] * (1 + dff) * bleach
    # Neuropil: population calcium (smoothed) + a slow shared drift; the pipeline's estimate of
    # it adds its own white noise.
    pop = ndimage.uniform_filter1d(dff.mean(axis=0), 15)
    shared = (0.5 * pop + 0.05 * _ou(rng, t_len, 20.0)).astype(np.float32)
    neuropil = col["neuropil_f0"] * (1 + col["neuropil_weight"] * shared[None, :])
    measured = f_cell + col["neuropil_r"] * neuropil
    # Shot noise with SD ~ sqrt(F), scaled so the baseline dF/F noise is noise_dff_sd.
    k = (
        col["noise_dff_sd"]
        * col["f0"]
        / np.sqrt(col["f0"] + col["neuropil_r"] * col["neuropil_f0"])
    )
    noise = rng.standard_normal((n, t_len), dtype=np.float32)
    noise *= np.sqrt(np.clip(measured, 1.0, None))
    noise *= k
    measured += noise
    # Overlapping ROIs: demixing leaves a small crosstalk; the raw trace holds more of it.
    partner = cells["crosstalk_partner"].astype(np.int64)
    other = f_cell[partner] - col["f0"][partner] * bleach[partner]
    demixed = measured + col["crosstalk"] * other
    raw = demixed + (col["crosstalk"] + 0.05) * other
    noise = rng.standard_normal((n, t_len), dtype=np.float32)
    noise *= 3.0
    noise += neuropil
    return {"raw": raw.astype(np.float32), "demixed": demixed.astype(np.float32), "neuropil": noise}


def baseline_dff(
    corrected: np.ndarray, block: int = 30, median_blocks: int = 181, mean_blocks: int = 101
) -> np.ndarray:
    """Stored-style dF/F float32 [N, T] = (F - B) / B with a running-median baseline B.

    B: running median over `median_blocks` block means of `block` frames (180 s), smoothed by a
    `mean_blocks` running mean (100 s), linearly interpolated back to frames.
    """
    n, t_len = corrected.shape
    nb = -(-t_len // block)
    padded = np.pad(corrected, ((0, 0), (0, nb * block - t_len)), mode="edge")
    means = padded.reshape(n, nb, block).mean(axis=2)
    # Running median evaluated every `stride` blocks (the baseline is smooth on that scale).
    half, stride = median_blocks // 2, 5
    ext = np.pad(means, ((0, 0), (half, half)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(ext, 2 * half + 1, axis=1)[:, ::stride]
    med_at = np.arange(0, nb, stride)
    med = np.median(windows, axis=2)  # [N, len(med_at)]
    med = np.stack([np.interp(np.arange(nb), med_at, m) for m in med])
    base_blocks = ndimage.uniform_filter1d(med, min(mean_blocks, nb), axis=1, mode="nearest")
    centers = np.arange(nb) * block + (block - 1) / 2
    frames = np.arange(t_len)
    base = np.stack([np.interp(frames, centers, b) for b in base_blocks]).astype(np.float32)
    return ((corrected - base) / base).astype(np.float32)
