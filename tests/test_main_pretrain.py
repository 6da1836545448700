"""End-to-end tests of tokenizer pretraining through `configs/pretrain.py:runlocal`.

Covers: logs, checkpoints and TensorBoard events of a 2-step run; a re-run resumes (no
retraining) and a longer re-run continues the step count; a SIGKILLed run restarted with the
same command ends bitwise equal to an uninterrupted one; an architecture change is refused with
the differing keys named; an unknown `--config.` key is a clear CLI error; the pmap path of the
real pretraining step matches one device.
"""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from configs import pretrain as pretrain_config
from quantformer_jax import checkpointing, metric_writer, parallel
from quantformer_jax.training import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(observatory, **training):
    config = pretrain_config.get_config("runlocal")
    config.data.cache_dir = str(observatory)
    config.training.update({"num_devices": 1, "progress_bar": False, **training})
    return config


def _overrides(observatory, **training):
    args = [f"--config.data.cache_dir={observatory}", "--config.training.num_devices=1",
            "--config.training.progress_bar=False"]  # fmt: skip
    return args + [f"--config.training.{k}={v}" for k, v in training.items()]


def _command(workdir, observatory, **training):
    return [sys.executable, "-m", "quantformer_jax.main", "--config=configs/pretrain.py:runlocal",
            f"--workdir={workdir}", *_overrides(observatory, **training)]  # fmt: skip


def _env(jax_cache):
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax_cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # fmt: skip


def _latest(workdir, config):
    """(state, meta) of the newest checkpoint of a workdir."""
    model = pretrain.create_model(config)
    tx = pretrain.optimizers.create_optimizer(config.optimizer)
    init_key, _, train_key = pretrain.seeds(config.seed)
    template = jax.eval_shape(lambda: pretrain.init_state(model, tx, init_key, train_key))
    ckpt = checkpointing.Checkpointer(str(workdir), architecture=pretrain.architecture(model))
    out = ckpt.restore(checkpointing.abstract_like(template))
    ckpt.close()
    return out


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_runlocal_writes_logs_and_checkpoints_and_resumes(tmp_path, mini_observatory, jax_cache):
    workdir = tmp_path / "run"
    out = pretrain.train_and_evaluate(_config(mini_observatory), str(workdir))
    assert np.isfinite(out["val_recon_mse"]) and -1 <= out["test_pearson"] <= 1
    assert 0 < out["test_codebook_usage"] <= 1
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2] and os.listdir(workdir / "checkpoints" / "best") == ["2"]
    records = metric_writer.read_metrics(str(workdir))
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("train_recon_loss", "train_masked_recon_loss", "train_vq_loss",
                "train_commit_loss", "train_pearson", "train_codebook_usage", "train_l2_grads",
                "train_learning_rate", "steps_per_sec"):  # fmt: skip
        assert key in train[-1], key
    assert any("val_recon_mse" in r for r in records) and any("test_pearson" in r for r in records)
    assert (workdir / "config.json").exists()
    acc = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    assert {"train_loss", "val_recon_mse", "val_codebook_perplexity"} <= set(acc.Tags()["scalars"])
    assert "val_reconstructions" in acc.Tags()["images"]

    # The same command with one more epoch resumes: steps 1-2 are not retrained, 3-4 follow.
    pretrain.train_and_evaluate(_config(mini_observatory, num_epochs=2), str(workdir))
    train_steps = [r["step"] for r in metric_writer.read_metrics(str(workdir)) if "train_loss" in r]
    assert train_steps == [1, 2, 3, 4]
    state, meta = _latest(workdir, _config(mini_observatory))
    assert int(state.step) == 4 and meta["progress"]["epoch"] == 2

    # Another architecture in the same workdir is refused, naming the keys.
    other = _config(mini_observatory)
    other.model.d_model = 32
    with pytest.raises(ValueError, match=r"(?s)different architecture.*d_model: checkpoint=16"):
        pretrain.train_and_evaluate(other, str(workdir))


def test_sigkill_then_rerun_is_bitwise_equal_to_uninterrupted(
    tmp_path, mini_observatory, jax_cache
):
    schedule = {"num_epochs": 3, "max_steps_per_epoch": 3}
    reference = tmp_path / "reference"
    pretrain.train_and_evaluate(_config(mini_observatory, **schedule), str(reference))

    killed = tmp_path / "killed"
    command = _command(killed, mini_observatory, **schedule)
    proc = subprocess.Popen(command, cwd=REPO, env=_env(jax_cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        ckpt_dir = killed / "checkpoints"
        if ckpt_dir.exists() and any(p.name in ("2", "4") for p in ckpt_dir.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    state, _ = _latest(killed, _config(mini_observatory))
    assert int(state.step) < 9  # killed mid-training

    done = subprocess.run(command, cwd=REPO, env=_env(jax_cache), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    final, meta = _latest(killed, _config(mini_observatory))
    expected, _ = _latest(reference, _config(mini_observatory))
    assert int(final.step) == 9 and meta["progress"]["epoch"] == 3
    _assert_bitwise_equal(final, expected)


def test_unknown_config_key_is_a_clear_error(tmp_path):
    command = [sys.executable, "-m", "quantformer_jax.main",
               "--config=configs/pretrain.py:runlocal", f"--workdir={tmp_path}",
               "--config.model.d_modle=8"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0
    assert "unknown config key(s) config.model.d_modle" in done.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_pmap_pretraining_step_matches_one_device(mini_observatory, jax_cache):
    """The pmap path (per-device rows, global mask, gathered dead-code update) = one device."""
    task = pretrain.make_task(_config(mini_observatory))
    # Counters at 1: every code unused in the first step is re-seeded (the gathered path runs).
    start = task.init_state()
    start = start.replace(model_state=jax.tree.map(lambda c: c * 0 + 1, start.model_state))
    start = jax.device_get(start)  # host copy: each run's first step donates its device state
    batches = [b for _, b in zip(range(2), task.train_batches(0, 0), strict=False)]
    results = {}
    for mode, n in (("jit", 1), ("pmap", 4)):
        traces = []

        def counted(*args, traces=traces, **kwargs):
            traces.append(1)  # runs only while tracing: two steps of one shape trace once
            return task.train_step(*args, **kwargs)

        dp = parallel.DataParallel(mode, num_devices=n)
        state = dp.put_state(start)
        step = dp.compile_train_step(counted)
        losses, replaced = [], []
        for batch in batches:
            state, metrics = step(state, dp.put_batch(batch))
            losses.append(float(metrics["loss"][0]))
            replaced.append(float(metrics["replaced_codes"][0]))
        results[mode] = losses, replaced, jax.device_get(dp.host_state(state))
        assert len(traces) == 1, f"{mode}: the train step was traced {len(traces)} times"
    (ref_loss, ref_replaced, ref), (loss, replaced, out) = results["jit"], results["pmap"]
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
    assert replaced == ref_replaced and replaced[0] > 0
    np.testing.assert_array_equal(out.model_state["vq_state"]["quantizer"]["counts"],
                                  ref.model_state["vq_state"]["quantizer"]["counts"])  # fmt: skip
    # Adam divides by sqrt(v): summation-order rounding in tiny gradients moves a parameter by
    # a small fraction of the learning rate (1e-3), so parameters get a looser bound.
    for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
