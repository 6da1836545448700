"""Recording noise of dF/F windows and the Pearson ceiling it sets for a code-based reconstruction.

The pretraining metric (REFERENCE.md 2.6, 5.4) is the mean per-(window, neuron) Pearson r between a
160-frame window and its reconstruction from L = 10 discrete codes. Most neuron-trials are inactive,
so most rows are largely recording noise, and no decoder can rebuild white noise from a few bits:

* noise SD per row: the robust difference estimate sigma = median|x(t+1) - x(t)| / (0.6745 sqrt 2),
  exact for white Gaussian noise. Calcium transients add their decay slopes to the differences
  and inflate it slightly (~10 % for 0.5 dF/F events at 1 Hz), which lowers the ceiling below;
  prefer the simulator's ground-truth noise level where there is one.
* CASCADE's noise level (Rupprecht et al. 2021; ALLEN_FORMAT.md 3.5):
  nu = 100 median|dF/F(t+1) - dF/F(t)| / sqrt(frame rate), in % Hz^-1/2. White noise of SD sigma at
  30 Hz gives nu = 17.4 sigma, so the documented per-frame SD of real Allen dF/F (0.03-0.2) is
  nu ~ 0.5-3.5 (robust SD 0.12-0.20 of real neuropil-corrected traces: nu ~ 2.1-3.5).
* Pearson ceiling of a code-based reconstruction (Shannon lower bound of rate-distortion theory): a
  reconstruction that is a function of R = L log2 K bits of a row x = s + n, with n white Gaussian
  noise of SD sigma independent of s, has h(x) >= h(n) and so a mean squared error of at least
  D = sigma^2 2^(-2R/T) per frame. The best affine rescaling of any reconstruction with Pearson r
  has squared error var(x) (1 - r^2) >= D, so r <= sqrt(1 - D / var(x)). The bound ignores the two
  per-row affine constants (`extra_bits` can charge for them) and assumes the decoder sees nothing
  but the codes, which holds for the tokenizer at evaluation (no stimulus, no skip path).

numpy only (data layer). The CLI prints the figures for a split of the pretraining windows:
python -m quantformer_jax.data.noise_ceiling --size mini --split test [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from quantformer_jax.constants import SAMPLING_RATE_HZ

# median |N(0, 2 sigma^2)| = 0.6745 sqrt(2) sigma
_MAD_TO_SD = 1.0 / (0.6744897501960817 * np.sqrt(2.0))


def noise_sd(traces: np.ndarray) -> np.ndarray:
    """Robust per-row white-noise SD from frame-to-frame differences. [..., T] -> [...]."""
    x = np.asarray(traces, dtype=np.float64)
    if x.shape[-1] < 2:
        raise ValueError(f"traces: need >= 2 frames on the last axis, got shape {x.shape}")
    return np.median(np.abs(np.diff(x, axis=-1)), axis=-1) * _MAD_TO_SD


def noise_level_nu(traces: np.ndarray, frame_rate_hz: float = SAMPLING_RATE_HZ) -> np.ndarray:
    """CASCADE's noise level nu in % Hz^-1/2 per row of dF/F traces. [..., T] -> [...]."""
    x = np.asarray(traces, dtype=np.float64)
    if x.shape[-1] < 2:
        raise ValueError(f"traces: need >= 2 frames on the last axis, got shape {x.shape}")
    return 100.0 * np.median(np.abs(np.diff(x, axis=-1)), axis=-1) / np.sqrt(frame_rate_hz)


def pearson_ceiling(
    traces: np.ndarray,
    noise: np.ndarray,
    num_tokens: int,
    codebook_size: int,
    extra_bits: float = 0.0,
) -> np.ndarray:
    """Upper bound on the Pearson r of any reconstruction of each row from its codes.

    Args:
        traces: [..., T] the windows (e.g. per-window dF/F, 160 frames).
        noise: [...] (or broadcastable) white-noise SD of each row, e.g. `noise_sd(traces)` or
            the simulator's ground truth.
        num_tokens: codes per row (L = T / patch length = 10).
        codebook_size: K.
        extra_bits: bits per row the reconstruction may carry beyond the codes.

    Returns:
        [...] the ceiling in [0, 1]; 0 where the row's variance does not exceed the distortion
        floor (a constant row included).
    """
    x = np.asarray(traces, dtype=np.float64)
    if num_tokens <= 0 or codebook_size < 2:
        raise ValueError(f"num_tokens ({num_tokens}) must be > 0 and codebook_size >= 2")
    bits = num_tokens * np.log2(codebook_size) + extra_bits
    floor = np.square(np.asarray(noise, dtype=np.float64)) * 2.0 ** (-2.0 * bits / x.shape[-1])
    var = x.var(axis=-1)
    ratio = np.divide(floor, var, out=np.ones_like(var), where=var > 0)
    return np.sqrt(np.clip(1.0 - ratio, 0.0, 1.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini", help="simulated Observatory size (mini|full)")
    parser.add_argument("--cache-dir", default="", help="an allensdk cache instead of simulation")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tokens", type=int, default=10)
    parser.add_argument("--codebook-sizes", default="256,512,1024,65536")
    parser.add_argument("--extra-bits", type=float, default=0.0)
    args = parser.parse_args(argv)
    from configs import common  # CLI only: the data layer itself does not depend on configs
    from quantformer_jax.data import datasets, simulate

    data_cfg = common.data_config()
    data_cfg.cache_dir, data_cfg.simulated_size = args.cache_dir, args.size
    ds = datasets.load_pretraining_dataset(data_cfg)
    cache_dir = datasets.resolve_cache_dir(data_cfg)
    parts = [e.splits[args.split] for e in ds.experiments]
    x = np.concatenate([p.traces.reshape(-1, p.traces.shape[-1]) for p in parts])
    active = np.concatenate([p.labels.reshape(-1) for p in parts]) == 1
    sigmas = {"robust": noise_sd(x)}
    truth_files = [simulate.ground_truth_path(cache_dir, e.experiment_id) for e in ds.experiments]
    if all(os.path.isfile(f) for f in truth_files):  # simulated: the per-cell noise level is known
        per_row = []
        for f, p in zip(truth_files, parts, strict=True):
            with np.load(f) as truth:
                per_row.append(np.broadcast_to(truth["cell_noise_dff_sd"], p.labels.shape))
        sigmas["truth"] = np.concatenate([s.reshape(-1) for s in per_row])
    nu = noise_level_nu(x)
    print(
        f"{args.split}: {len(x)} rows ({active.sum()} active); noise SD median "
        + ", ".join(f"{k} {np.median(v):.3f}" for k, v in sigmas.items())
        + f"; nu median {np.median(nu):.2f} (5-95 %: {np.percentile(nu, 5):.2f}-"
        f"{np.percentile(nu, 95):.2f}) % Hz^-1/2"
    )
    for k in (int(s) for s in args.codebook_sizes.split(",")):
        for name, sigma in sigmas.items():
            r = pearson_ceiling(x, sigma, args.tokens, k, args.extra_bits)
            print(
                f"  K={k:6d} (noise {name}): Pearson ceiling all rows {r.mean():.3f}, "
                f"active {r[active].mean():.3f}, inactive {r[~active].mean():.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
