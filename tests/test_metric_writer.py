"""Tests for metric_writer.py: TensorBoard events, metrics.jsonl, config.json, images."""

import json

import ml_collections
import numpy as np
from matplotlib.figure import Figure
from tensorboard.backend.event_processing import event_accumulator

from quantformer_jax import metric_writer


def test_scalars_images_config_round_trip(tmp_path):
    writer = metric_writer.MetricWriter(str(tmp_path))
    config = ml_collections.ConfigDict({"a": 1, "model": {"d": (2, 3)}})
    writer.write_config(config)
    writer.write_scalars(1, {"train_loss": 0.5, "val_pearson": -0.25})
    writer.write_scalars(2, {"train_loss": float("nan")})
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    image = metric_writer.figure_to_image(fig)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    writer.write_images(2, {"recon": image})
    writer.close()

    records = metric_writer.read_metrics(str(tmp_path))
    assert records == [{"step": 1, "train_loss": 0.5, "val_pearson": -0.25},
                       {"step": 2, "train_loss": "nan"}]  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text())["model"]["d"] == [2, 3]
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("val_pearson")] == [-0.25]
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2]
    assert "recon" in acc.Tags()["images"]


def test_partial_line_from_a_killed_run_is_dropped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"')
    writer = metric_writer.MetricWriter(str(tmp_path))
    writer.write_scalars(3, {"a": 3.0})
    writer.close()
    assert [r["step"] for r in metric_writer.read_metrics(str(tmp_path))] == [1, 3]


def test_disabled_writer_writes_nothing(tmp_path):
    writer = metric_writer.MetricWriter(str(tmp_path / "w"), enabled=False)
    writer.write_scalars(1, {"a": 1.0})
    writer.close()
    assert not (tmp_path / "w").exists()
