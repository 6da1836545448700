"""Tests for data/pipeline.py: window batches, balanced neuron-row batches, buckets, resume."""

import numpy as np
import pytest

from quantformer_jax.data import pipeline
from quantformer_jax.data.windows import WindowSplit

T = 8  # window length does not matter to the pipeline


def make_split(num_windows: int, num_neurons: int, *, exp: int = 0, p_active=0.3, seed=0):
    """Windows whose every frame holds the id exp*10000 + window*100 + neuron (exact in float32)."""
    rng = np.random.default_rng(seed)
    ids = exp * 10000 + np.arange(num_windows)[:, None] * 100 + np.arange(num_neurons)[None, :]
    return WindowSplit(
        traces=np.repeat(ids[..., None], T, axis=-1).astype(np.float32),
        stim=rng.random((num_windows, 4), dtype=np.float32),
        labels=(rng.random((num_windows, num_neurons)) < p_active).astype(np.int32),
        condition_id=np.arange(num_windows, dtype=np.int32) + 120,
        trial_start=np.arange(num_windows, dtype=np.int64) * 90,
    )


def test_window_batches_shapes_padding_and_coverage():
    split = make_split(10, 3)
    batches = list(pipeline.window_batches(split, 4, seed=1, epoch=0, shuffle=True))
    assert len(batches) == pipeline.num_batches(10, 4) == 3
    for b in batches:
        assert b["x"].shape == (4, 3, T) and b["x"].dtype == np.float32
        assert b["stim"].shape == (4, 4) and b["labels"].shape == (4, 3)
        assert b["labels"].dtype == np.int32 and b["condition_id"].dtype == np.int32
        assert b["valid"].dtype == bool
    assert batches[-1]["valid"].tolist() == [True, True, False, False]
    assert not batches[-1]["x"][2:].any() and not batches[-1]["labels"][2:].any()
    seen = np.concatenate([b["x"][b["valid"], 0, 0] for b in batches]) // 100
    assert sorted(seen.astype(int)) == list(range(10))  # every window exactly once
    for b in batches:  # stim, labels, condition ids travel with their window
        w = (b["x"][b["valid"], 0, 0] // 100).astype(int)
        np.testing.assert_array_equal(b["stim"][b["valid"]], split.stim[w])
        np.testing.assert_array_equal(b["labels"][b["valid"]], split.labels[w])
        np.testing.assert_array_equal(b["condition_id"][b["valid"]], split.condition_id[w])


def order_of(split, **kw):
    return np.concatenate(
        [b["x"][b["valid"], 0, 0] // 100 for b in pipeline.window_batches(split, 3, **kw)]
    )


def test_window_order_is_a_pure_function_of_seed_and_epoch():
    split = make_split(20, 2)
    a = order_of(split, seed=3, epoch=2, shuffle=True)
    np.testing.assert_array_equal(a, order_of(split, seed=3, epoch=2, shuffle=True))
    assert not np.array_equal(a, order_of(split, seed=3, epoch=3, shuffle=True))
    assert not np.array_equal(a, order_of(split, seed=4, epoch=2, shuffle=True))
    np.testing.assert_array_equal(order_of(split, seed=3, epoch=2, shuffle=False), np.arange(20))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_window_batches_resume_equals_uninterrupted():
    split = make_split(11, 2)
    full = list(pipeline.window_batches(split, 3, seed=5, epoch=1, shuffle=True))
    for k in range(len(full) + 1):
        resumed = pipeline.window_batches(split, 3, seed=5, epoch=1, shuffle=True, start_step=k)
        assert_same_batches(list(resumed), full[k:])


def row_ids(batch):
    return batch["x"][batch["row_valid"], 0].astype(int)


def pretrain(splits, **kw):
    args = dict(seed=0, epoch=0, shuffle=True, balance=True, buckets=(8, 16, 32, 64))
    args.update(kw)
    return list(pipeline.pretraining_batches(splits, 4, **args)), pipeline.pretraining_plan(
        splits, 4, **{k: v for k, v in args.items() if k != "start_step"}
    )


def test_balanced_rows_keep_every_active_and_as_many_inactive():
    splits = [make_split(9, 3, exp=1, seed=1), make_split(7, 5, exp=2, seed=2)]
    labels = {  # row id -> label
        int(i): int(y)
        for s in splits
        for i, y in zip(s.traces[..., 0].ravel(), s.labels.ravel(), strict=True)
    }
    window_keys = [100 + w for w in range(9)] + [200 + w for w in range(7)]  # global index -> key
    batches, plan = pretrain(splits)
    assert len(batches) == plan.num_steps > 0 and plan.split_groups == 0
    for b, rows, (g, _, _) in zip(batches, plan.rows_per_step, plan.steps, strict=True):
        ids, y = row_ids(b), b["labels"][b["row_valid"]]
        assert b["x"].shape[1] == T and b["x"].dtype == np.float32
        assert b["labels"].dtype == np.int32 and len(ids) == rows == b["row_valid"].sum()
        assert b["x"].shape[0] == min(m for m in (8, 16, 32, 64) if m >= rows)  # smallest bucket
        assert not b["row_valid"][rows:].any() and not b["x"][rows:].any()
        assert [labels[i] for i in ids] == y.tolist()
        # Every active row of the group's windows is kept, and the same number of inactive rows.
        group = {window_keys[i] for i in plan.groups[g]}
        assert len(group) == 4 and set(ids // 100) <= group
        group_rows = [i for i in labels if i // 100 in group]
        active = sorted(i for i in group_rows if labels[i])
        assert sorted(ids[y == 1]) == active
        assert (y == 0).sum() == min(len(active), len(group_rows) - len(active))
        assert len(set(ids)) == len(ids)
    seen_active = {i for b in batches for i in row_ids(b) if labels[i]}
    assert seen_active == {i for i, y in labels.items() if y}  # one epoch sees every active row


def test_eval_rows_are_all_rows_in_order():
    splits = [make_split(5, 3, exp=1), make_split(3, 5, exp=2)]
    batches, plan = pretrain(splits, shuffle=False, balance=False)
    ids = np.concatenate([row_ids(b) for b in batches])
    expected = np.concatenate([s.traces[..., 0].ravel() for s in splits]).astype(int)
    np.testing.assert_array_equal(ids, expected)
    assert plan.skipped_empty == 0


def test_empty_balanced_groups_are_skipped_and_counted():
    split = make_split(12, 3, p_active=0.0)
    split.labels[[2, 7]] = [1, 0, 0]  # only windows 2 and 7 have an active row
    batches, plan = pretrain(split, shuffle=False)  # groups: 0-3, 4-7, 8-11
    assert plan.skipped_empty == 1 and plan.num_steps == len(batches) == 2
    assert [len(row_ids(b)) for b in batches] == [2, 2]


def test_oversized_groups_are_split_into_balanced_chunks():
    split = make_split(8, 20, p_active=0.5, seed=3)  # 4 windows x 20 neurons = 80 rows per group
    batches, plan = pretrain(split, buckets=(16, 32), balance=False, shuffle=False)
    assert plan.split_groups == 2 and len(batches) == plan.num_steps == 6
    assert all(b["x"].shape[0] == 32 for b in batches)
    ids = np.concatenate([row_ids(b) for b in batches])
    np.testing.assert_array_equal(ids, split.traces[..., 0].ravel().astype(int))  # nothing lost
    batches, plan = pretrain(split, buckets=(16, 32), balance=True)
    assert plan.split_groups > 0 and max(plan.rows_per_step) <= 32
    for b in batches:
        y = b["labels"][b["row_valid"]]
        assert 0 < y.mean() < 1  # shuffled before chunking: no all-active chunk


def test_pretraining_determinism_and_resume():
    splits = [make_split(9, 3, exp=1, seed=1), make_split(7, 5, exp=2, seed=2)]
    full, plan = pretrain(splits, seed=7, epoch=3, buckets=(4, 8))  # some groups are split
    assert plan.split_groups > 0
    assert_same_batches(full, pretrain(splits, seed=7, epoch=3, buckets=(4, 8))[0])
    other = pretrain(splits, seed=7, epoch=4, buckets=(4, 8))[0]
    assert [row_ids(b).tolist() for b in other] != [row_ids(b).tolist() for b in full]
    for k in range(len(full) + 1):
        assert_same_batches(
            pretrain(splits, seed=7, epoch=3, buckets=(4, 8), start_step=k)[0], full[k:]
        )


def test_bad_arguments():
    with pytest.raises(ValueError, match="data.row_buckets"):
        pipeline.pretraining_plan(
            make_split(2, 2), 2, seed=0, epoch=0, shuffle=False, balance=False, buckets=()
        )
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.num_batches(3, 0)
    assert list(pipeline.window_batches(make_split(0, 2), 4, seed=0, epoch=0, shuffle=True)) == []
