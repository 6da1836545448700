"""The chained launch script (pretrain -> finetune -> evaluate -> report) at runlocal size."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(root, cache_dir):
    env = {**os.environ, "SIZE": "runlocal", "TASKS": "forecast", "PY": sys.executable}
    env.pop("XLA_FLAGS", None)  # one device, as a user's run
    return subprocess.run(
        ["bash", "launch/pretrain_finetune_evaluate.sh", str(root),
         f"--config.data.cache_dir={cache_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_chained_pipeline_runs_and_skips_finished_stages(mini_observatory, tmp_path):
    root = tmp_path / "chain"
    first = _run(root, mini_observatory)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-4000:]
    for stage in ("pretrain", "quantformer_forecast"):
        with open(root / stage / "metrics.json") as f:
            payload = json.load(f)
        assert payload["split"] == "test"
        assert os.path.isdir(root / stage / "checkpoints")
    forecast = json.load(open(root / "quantformer_forecast" / "metrics.json"))
    assert forecast["model_class"] == "quantcoder" and forecast["task"] == "forecast"
    # The finetuning stage was initialised from the chained pretraining workdir.
    config = json.load(open(root / "quantformer_forecast" / "config.json"))
    assert config["init_from"] == str(root / "pretrain")
    assert "| QuantFormer |" in (root / "report.md").read_text()

    second = _run(root, mini_observatory)  # everything finished: only the report is redone
    assert second.returncode == 0, second.stderr[-4000:]
    assert "[pretrain] done earlier" in second.stdout
    assert "[quantformer_forecast] done earlier" in second.stdout


def test_launch_scripts_parse_and_print_usage():
    for script in ("pretrain_finetune_evaluate.sh", "baseline_sweep.sh", "data_parallel.sh"):
        out = subprocess.run(["bash", f"launch/{script}"], cwd=REPO, capture_output=True,
                             text=True)  # fmt: skip
        assert out.returncode == 2 and "launch/" in out.stderr, script
    check = subprocess.run(["bash", "-n", "launch/slurm_multihost.sbatch"], cwd=REPO)
    assert check.returncode == 0
