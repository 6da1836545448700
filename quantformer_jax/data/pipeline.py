"""Batch iterators over trial windows (numpy only): fixed-shape window and neuron-row batches.

* `window_batches` (finetuning, baselines): `batch_size` windows of one experiment per step; the
  last partial batch is padded and masked (`valid`), so shapes never change and nothing is dropped.
* `pretraining_batches` (tokenizer pretraining, REFERENCE.md 1.11 and P8): `batch_windows` windows,
  shuffled across experiments, have their neurons flattened into independent rows [rows, T]. With
  `balance` (the original's train collate) every active row is kept plus as many randomly chosen
  inactive rows (all of them if there are fewer). The rows are padded to the smallest bucket size
  >= rows (`row_valid` masks the padding) so a jitted step compiles once per bucket. Decisions:
  - a group with no active row (balanced) would be an empty batch (NaN loss in the original): it is
    skipped, and counted in `PretrainingPlan.skipped_empty`;
  - a group with more rows than the largest bucket is split into near-equal chunks that each fit
    (rows shuffled first when balancing, so each chunk stays balanced); nothing is subsampled, and
    the count is in `PretrainingPlan.split_groups`.

Randomness is a pure function of (seed, epoch) (and of the group index for balancing), so the
number of steps of an epoch is known up front and `start_step=k` yields exactly what an
uninterrupted iteration yields from its k-th step on (exact resume).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np

from quantformer_jax.data.windows import WindowSplit

_BALANCE_STREAM = 1  # separates the balancing random stream from the window-order stream


def _rng(seed: int, epoch: int, *extra: int) -> np.random.Generator:
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed ({seed}) and epoch ({epoch}) must be >= 0")
    return np.random.default_rng([int(seed), int(epoch), *extra])


def window_order(num_windows: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which an epoch visits `num_windows` windows (a permutation when shuffling)."""
    if not shuffle:
        return np.arange(num_windows)
    return _rng(seed, epoch).permutation(num_windows)


def num_batches(num_windows: int, batch_size: int) -> int:
    """Steps per epoch of `window_batches` (the last partial batch counts)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return math.ceil(num_windows / batch_size)


def window_batches(
    split: WindowSplit,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields the batches of one epoch over one experiment's windows.

    Args:
      split: the windows (WindowSplit).
      batch_size: windows per batch (B).
      seed, epoch: the order is a pure function of these.
      shuffle: permute the windows (train) or keep time order (eval).
      start_step: skip the first `start_step` batches (resume inside an epoch).

    Yields:
      dict(x float32 [B, N, T], stim float32 [B, D], labels int32 [B, N], condition_id int32 [B],
      valid bool [B]); padded windows are all zeros with valid=False.
    """
    order = window_order(len(split), seed=seed, epoch=epoch, shuffle=shuffle)
    steps = num_batches(len(split), batch_size)
    for step in range(start_step, steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        n = len(idx)
        batch = {
            "x": split.traces[idx],
            "stim": split.stim[idx],
            "labels": split.labels[idx],
            "condition_id": split.condition_id[idx],
            "valid": np.ones(n, dtype=bool),
        }
        if n < batch_size:
            batch = {k: _pad_rows(v, batch_size) for k, v in batch.items()}
        yield batch


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """Zero-pads the leading axis of `a` to `rows` (False for bool arrays)."""
    out = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
    out[: len(a)] = a
    return out


@dataclasses.dataclass(frozen=True)
class PretrainingPlan:
    """The steps of one pretraining epoch, computed from labels only (no traces touched)."""

    steps: tuple[tuple[int, int, int], ...]  # (group index, chunk index, number of chunks)
    groups: tuple[np.ndarray, ...]  # per group: int64 [k] global window indices
    rows_per_step: tuple[int, ...]  # real (unpadded) rows of each step
    skipped_empty: int  # balanced groups without any active row
    split_groups: int  # groups larger than the largest bucket, split into chunks

    @property
    def num_steps(self) -> int:
        return len(self.steps)


def _as_list(split: WindowSplit | Sequence[WindowSplit]) -> list[WindowSplit]:
    parts = [split] if isinstance(split, WindowSplit) else list(split)
    frames = {p.window_frames for p in parts if len(p)}
    if len(frames) > 1:
        raise ValueError(f"all experiments must share one window length, got {sorted(frames)}")
    return parts


def _check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted(int(b) for b in buckets))
    if not out or out[0] <= 0:
        raise ValueError(f"config key data.row_buckets must be positive sizes, got {buckets}")
    return out


def pretraining_plan(
    split: WindowSplit | Sequence[WindowSplit],
    batch_windows: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    balance: bool,
    buckets: Sequence[int],
) -> PretrainingPlan:
    """Plans one epoch of `pretraining_batches` (same arguments); see the module docstring."""
    parts = _as_list(split)
    largest = _check_buckets(buckets)[-1]
    # Per global window: active rows and neuron count.
    active = np.concatenate([p.labels.sum(axis=1) for p in parts] + [np.zeros(0, np.int64)])
    neurons = np.concatenate([np.full(len(p), p.num_neurons) for p in parts] + [np.zeros(0, int)])
    order = window_order(len(active), seed=seed, epoch=epoch, shuffle=shuffle)
    steps, groups, rows_per_step = [], [], []
    skipped = split_groups = 0
    for g in range(num_batches(len(order), batch_windows)):
        group = order[g * batch_windows : (g + 1) * batch_windows]
        n_act = int(active[group].sum())
        n_all = int(neurons[group].sum())
        rows = n_act + min(n_act, n_all - n_act) if balance else n_all
        groups.append(group)
        if rows == 0:
            skipped += 1
            continue
        chunks = math.ceil(rows / largest)
        split_groups += chunks > 1
        sizes = [len(c) for c in np.array_split(np.arange(rows), chunks)]
        steps += [(g, c, chunks) for c in range(chunks)]
        rows_per_step += sizes
    return PretrainingPlan(
        steps=tuple(steps),
        groups=tuple(groups),
        rows_per_step=tuple(rows_per_step),
        skipped_empty=skipped,
        split_groups=split_groups,
    )


def _group_rows(parts, offsets, group, balance, rng):
    """Rows of one group: ([rows, T] float32, [rows] int32), balanced as the original if asked."""
    part = np.searchsorted(offsets, group, side="right") - 1  # experiment of each window
    local = group - offsets[part]
    x = np.concatenate([parts[p].traces[w] for p, w in zip(part, local, strict=True)])
    y = np.concatenate([parts[p].labels[w] for p, w in zip(part, local, strict=True)])
    if balance:
        act, inact = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
        keep = np.concatenate([act, rng.permutation(inact)[: len(act)]])  # active first, as torch
        x, y = x[keep], y[keep]
    return x, y


def pretraining_batches(
    split: WindowSplit | Sequence[WindowSplit],
    batch_windows: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    balance: bool,
    buckets: Sequence[int],
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields the neuron-row batches of one pretraining epoch.

    Args:
      split: one WindowSplit per experiment (or a single one); N may differ between them.
      batch_windows: windows per group (the original's batch size, 32).
      seed, epoch: windows order and balancing are pure functions of these.
      shuffle: permute the windows across experiments (train) or keep order (eval).
      balance: keep all active rows + as many random inactive rows (train); eval: False.
      buckets: allowed padded row counts (config key data.row_buckets).
      start_step: skip the first `start_step` steps of the epoch's plan (resume).

    Yields:
      dict(x float32 [M, T], row_valid bool [M], labels int32 [M]); M is a bucket size.
    """
    parts = _as_list(split)
    sizes = _check_buckets(buckets)
    plan = pretraining_plan(
        parts, batch_windows, seed=seed, epoch=epoch, shuffle=shuffle, balance=balance,
        buckets=sizes,
    )  # fmt: skip
    offsets = np.cumsum([0] + [len(p) for p in parts])
    cached_group, rows = -1, None
    for step in range(start_step, plan.num_steps):
        g, chunk, chunks = plan.steps[step]
        if g != cached_group:  # the chunks of a split group share one computation
            rng = _rng(seed, epoch, _BALANCE_STREAM, g)
            x, y = _group_rows(parts, offsets, plan.groups[g], balance, rng)
            if chunks > 1 and balance:
                perm = rng.permutation(len(y))  # mix active and inactive across the chunks
                x, y = x[perm], y[perm]
            rows = list(zip(np.array_split(x, chunks), np.array_split(y, chunks), strict=True))
            cached_group = g
        x, y = rows[chunk]
        m = next(b for b in sizes if b >= len(y))
        yield {
            "x": _pad_rows(x.astype(np.float32, copy=False), m),
            "row_valid": _pad_rows(np.ones(len(y), dtype=bool), m),
            "labels": _pad_rows(y.astype(np.int32, copy=False), m),
        }
