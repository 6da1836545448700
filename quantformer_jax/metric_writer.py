"""MetricWriter: TensorBoard (tensorboardX) + `metrics.jsonl` + `config.json`, process 0 only.

clu's and flax's writers import TensorFlow, so we keep a small writer of our own. Every scalar
write goes to TensorBoard and, as one JSON line `{"step": s, "<name>": value, ...}`, to
`workdir/metrics.jsonl` for scripts and tests. Other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def _is_main_process() -> bool:
    import jax  # Deferred: the writer itself does not need jax.

    return jax.process_index() == 0


def _repair_jsonl(path: str) -> None:
    """Drops a partial last line left by a killed run, so every line stays valid JSON."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class MetricWriter:
    """Writes scalars, images and hyperparameters of one run.

    Args:
        workdir: the run directory; TensorBoard events go to `workdir/tensorboard`.
        enabled: None = only on process 0.
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.workdir = workdir
        self.enabled = _is_main_process() if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        os.makedirs(workdir, exist_ok=True)
        self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=30)
        path = os.path.join(workdir, "metrics.jsonl")
        _repair_jsonl(path)
        self._jsonl = open(path, "a")  # noqa: SIM115 - kept open for the run, closed in close()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes one value per name at `step` (TensorBoard + one metrics.jsonl line)."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        for name, value in scalars.items():
            value = float(value)
            self._tb.add_scalar(name, value, global_step=int(step))
            # JSON has no NaN/inf; keep them visible as strings instead of dropping them.
            record[name] = value if math.isfinite(value) else str(value)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Writes uint8 images [H, W, C] (e.g. from `figure_to_image`)."""
        if not self.enabled:
            return
        for name, image in images.items():
            self._tb.add_image(name, np.asarray(image), global_step=int(step), dataformats="HWC")

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Writes flat hyperparameters once (TensorBoard HParams tab)."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams as hparams_summary

        clean = {
            k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in hparams.items()
        }
        for summary in hparams_summary(clean, {}):
            self._tb.file_writer.add_summary(summary)

    def write_config(self, config: Any) -> None:
        """Writes `config.json` (the full run config) and the flat hyperparameters."""
        if not self.enabled:
            return
        from quantformer_jax.checkpointing import flatten_dict

        as_dict = json.loads(config.to_json_best_effort()) if hasattr(config, "to_dict") else config
        with open(os.path.join(self.workdir, "config.json"), "w") as f:
            json.dump(as_dict, f, indent=2, sort_keys=True)
        self.write_hparams(flatten_dict(as_dict))

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def figure_to_image(fig: Any) -> np.ndarray:
    """Renders a matplotlib `Figure` with the Agg canvas to a uint8 [H, W, 3] array.

    Build figures with `matplotlib.figure.Figure()` (not pyplot) so no global backend or
    figure registry is involved and nothing needs closing.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """Reads `workdir/metrics.jsonl` back (for scripts, notebooks and tests)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
