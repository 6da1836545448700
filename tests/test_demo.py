"""Tests of quantformer_jax/demo.py: stage configs from configs/demo.py, skip/resume bookkeeping
and failure handling, with the training stages replaced by fakes (no training here)."""

import json
import os

import pytest

from quantformer_jax import demo, evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # config files are named relative to the repository root


def test_stage_configs_follow_the_presets():
    presets = demo.load_config_file("configs/demo.py:scale=demo")
    dirs = demo.stage_dirs("/r", presets.order, seed=3, num_seeds=1)
    assert dirs["pretrain"] == "/r/pretrain"
    pre = demo.run_config(presets, "pretrain", seed=3, cache_dir="/obs", dirs=dirs)
    assert pre.task == "pretrain" and pre.seed == 3 and pre.data.cache_dir == "/obs"
    qf = demo.run_config(presets, "quantformer_forecast", seed=3, cache_dir="/obs", dirs=dirs)
    assert qf.init_from == "/r/pretrain"
    assert qf.model.to_dict() == pre.model.to_dict()  # the pretrained architecture
    for key, value in presets.stages.quantformer_forecast.overrides:
        node = qf
        for part in key.split("."):
            node = node[part]
        assert node == value
    text = demo.command_line(presets.stages.quantformer_forecast, qf, "/r/quantformer_forecast")
    assert text.startswith("python -m quantformer_jax.main --config=configs/forecast.py")
    assert "--config.init_from=/r/pretrain" in text and "--config.seed=3" in text
    multi = demo.stage_dirs("/r", presets.order, seed=2, num_seeds=3)
    assert multi["majority"] == "/r/seed2/majority"
    # Every stage of both scales builds a config the trainers accept (known keys only).
    full = demo.load_config_file("configs/demo.py:scale=full")
    for name in full.order:
        assert demo.run_config(full, name, seed=0, cache_dir="/obs", dirs=dirs).task


def test_unknown_override_is_named():
    config = demo.load_config_file("configs/pretrain.py:runlocal")
    with pytest.raises(KeyError, match="training.num_epoch"):
        demo.apply_overrides(config, [("training.num_epoch", 3)])


def test_run_skips_finished_stages_and_isolates_failures(tmp_path, monkeypatch, capsys):
    presets = demo.load_config_file("configs/demo.py:runlocal")
    root = str(tmp_path)
    calls = []

    def fake_stage(config, workdir):
        calls.append(os.path.basename(workdir))
        if config.task == "pretrain":
            raise FloatingPointError("non-finite train_loss")
        payload = {"task": config.task, "model_class": config.model_class, "seed": config.seed,
                   "split": "test", "metrics": {"mae": 0.1, "mse": 0.02, "corr": 0.3,
                   "balanced_accuracy": 0.6, "f1": 0.5}, "plots": {}}  # fmt: skip
        with open(os.path.join(workdir, evaluate.METRICS_FILE), "w") as f:
            json.dump(payload, f)
        return payload

    monkeypatch.setattr(demo, "build_observatory", lambda presets, root: os.path.join(root, "obs"))
    monkeypatch.setattr(demo, "run_stage", fake_stage)
    only = ["pretrain", "quantformer_forecast", "persistence", "majority"]
    assert not demo.run(root, presets, [0], only)  # pretrain failed
    out = capsys.readouterr().out
    assert "pretrain               FAILED" in out and "FloatingPointError" in out
    assert "quantformer_forecast   SKIPPED: pretrain failed" in out
    assert calls == ["pretrain", "persistence", "majority"]
    stages = json.load(open(os.path.join(root, demo.STAGES_FILE)))
    assert stages["pretrain"]["status"] == "failed" and stages["persistence"]["status"] == "done"
    assert "Traceback" in open(os.path.join(root, "pretrain", "log.txt")).read()
    assert os.path.isfile(os.path.join(root, "report.md"))

    calls.clear()
    assert not demo.run(root, presets, [0], only)  # finished stages are not run again
    assert calls == ["pretrain"]
    assert "persistence            done earlier: test mae=0.1000" in capsys.readouterr().out
    assert json.load(open(os.path.join(root, demo.STAGES_FILE)))["pretrain"]["runs"] == 2


def test_isolated_stages_run_in_child_processes(tmp_path, monkeypatch, capsys, mini_observatory):
    """The CLI's default: each stage in a fresh process; its result and its failure come back."""
    presets = demo.load_config_file("configs/demo.py:runlocal")
    monkeypatch.setattr(demo, "build_observatory", lambda presets, root: str(mini_observatory))
    root = str(tmp_path / "ok")
    assert demo.run(root, presets, [0], ["persistence"], isolate=True)
    payload = json.load(open(os.path.join(root, "persistence", evaluate.METRICS_FILE)))
    assert payload["task"] == "forecast" and payload["metrics"]["mae"] > 0
    assert "persistence            done in" in capsys.readouterr().out
    assert "Experiment" in open(os.path.join(root, "persistence", "log.txt")).read()  # child's log

    missing = str(tmp_path / "no_observatory")
    monkeypatch.setattr(demo, "build_observatory", lambda presets, root: missing)
    bad = str(tmp_path / "bad")
    assert not demo.run(bad, presets, [0], ["persistence"], isolate=True)
    out = capsys.readouterr().out
    assert "persistence            FAILED" in out and "exit code 0" in out
    log = open(os.path.join(bad, "persistence", "log.txt")).read()
    assert "Traceback" in log and "no_observatory" in log
    stages = json.load(open(os.path.join(bad, demo.STAGES_FILE)))
    assert stages["persistence"]["status"] == "failed"
