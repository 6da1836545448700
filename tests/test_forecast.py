"""End-to-end and property tests of the forecasting trainer (training/forecast.py).

One runlocal pretraining workdir and one 2-step `configs/forecast.py:runlocal` run per module.
Checked: logs, checkpoints, code classes, test_metrics.json (per-step vectors); a longer re-run
resumes; the forecast never reads the future frames; it decodes the expected code vector
(config.decoding, faithful forces argmax); the loss equals the class-weighted mean of
-log p over the future patches of the teacher targets; architecture mismatch and a missing
`init_from` are clear errors.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from configs import forecast as forecast_config
from quantformer_jax import metric_writer
from quantformer_jax.training import finetune, forecast, targets


def _config(observatory, init_from="", **training):
    config = forecast_config.get_config("runlocal")
    config.data.cache_dir = str(observatory)
    config.init_from = str(init_from)
    config.training.update({"num_devices": 1, **training})
    return config


pytestmark = pytest.mark.usefixtures("jax_cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory, mini_observatory, pretrained):
    workdir = str(tmp_path_factory.mktemp("forecast"))
    results = forecast.train_and_evaluate(_config(mini_observatory, pretrained), workdir)
    return workdir, results


def test_run_writes_metrics_classes_and_selected_test(run):
    workdir, results = run
    for key in ("val_mse", "test_mse", "selected_test_mse", "selected_test_code_accuracy",
                "selected_test_mse_q", "selected_test_activation_f1",
                "selected_test_activation_max_f1", "selected_test_unseen_codes"):  # fmt: skip
        assert key in results and np.isfinite(results[key]), key
    payload = json.load(open(os.path.join(workdir, finetune.TEST_METRICS_FILE)))
    assert payload["selected_step"] == 2 and payload["selection_metric"] == "val_mse"
    assert len(payload["metrics"]["mae_step"]) == 64  # per horizon step
    classes = targets.CodeClasses.load(os.path.join(workdir, forecast.CODE_CLASSES_FILE))
    assert classes.num_classes >= 1 and np.all(classes.class_weights > 0)
    recon = json.load(open(os.path.join(workdir, forecast.TEACHER_RECON_FILE)))
    assert set(recon) == {"val_teacher_recon_mse", "val_teacher_recon_mse_raw_codebook"}
    steps = [r["step"] for r in metric_writer.read_metrics(workdir) if "train_loss" in r]
    assert steps == [1, 2]


def test_rerun_resumes(run, mini_observatory, pretrained):
    workdir, _ = run
    config = _config(mini_observatory, pretrained, num_epochs=2)
    forecast.train_and_evaluate(config, workdir)
    steps = [r["step"] for r in metric_writer.read_metrics(workdir) if "train_loss" in r]
    assert steps == [1, 2, 3, 4]  # continued from step 2, nothing retrained


@pytest.fixture(scope="module")
def loaded(run, mini_observatory):
    workdir, _ = run
    return finetune.load_run(forecast.build, _config(mini_observatory), workdir)


def test_forecast_never_reads_the_future(loaded):
    trainer, state = loaded
    batch = next(iter(trainer.setup.eval_batches("test")))
    s = trainer.setup.source_frames
    changed = dict(batch)
    x = batch["x"].copy()
    x[..., s:] = np.random.RandomState(0).randn(*x[..., s:].shape) * 5
    changed["x"] = x
    a, b = trainer.predict_batch(state, batch), trainer.predict_batch(state, changed)
    assert a["forecast"].shape == batch["x"][..., s:].shape  # [B, N, F]
    assert a["pred_classes"].shape == batch["x"].shape[:2] + (4,)
    np.testing.assert_array_equal(a["forecast"], b["forecast"])
    np.testing.assert_array_equal(a["pred_classes"], b["pred_classes"])
    # ... while the teacher targets do depend on the future (the check has teeth).
    assert not np.array_equal(a["codes"][..., s // 16 :], b["codes"][..., s // 16 :])


def test_loss_is_the_class_weighted_mean_over_future_patches(loaded):
    trainer, state = loaded
    batch = next(iter(trainer.setup.eval_batches("val")))
    s = trainer.setup.source_frames
    pred = trainer.predict_batch(state, batch)
    out = {"code_logits": pred["code_logits"]}
    loss = float(jax.jit(trainer.heads.loss_fn)(out, batch, state.model_state))
    classes = trainer.heads.teacher.classes
    labels = classes.code_to_class[np.asarray(pred["codes"])[..., s // 16 :]]  # [B, N, 4]
    np.testing.assert_array_equal(labels, pred["target_classes"])
    logp = np.asarray(jax.nn.log_softmax(pred["code_logits"]))
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    w = classes.class_weights[labels]
    keep = np.broadcast_to(batch["valid"][:, None, None], labels.shape)
    np.testing.assert_allclose(loss, np.sum(w * nll * keep) / keep.sum(), rtol=1e-5)


def test_trainer_forecast_decodes_the_expected_code_vector_by_default(loaded):
    trainer, state = loaded
    heads = trainer.heads
    assert heads.decoding == "expected"  # configs/forecast.py's default reaches the trainer
    batch = next(iter(trainer.setup.eval_batches("test")))
    s = trainer.setup.source_frames
    inputs = finetune.model_inputs(batch, s, train=False, naive=False)
    out, _ = finetune.apply_model(
        trainer.model, state.params, state.model_state, inputs, train=False
    )
    got = np.asarray(trainer.predict_batch(state, batch)["forecast"])  # [B, N, F]
    # By hand: C' rows of the student's source codes, then softmax(logits) @ C'[class codes].
    teacher, params = heads.teacher, state.model_state[finetune.TEACHER]["params"]
    book = targets.effective_codebook(teacher.module, params)  # [K, d]
    probs = np.asarray(jax.nn.softmax(out["code_logits"]))  # [B, N, 4, C]
    source = book[np.asarray(out["source_codes"])[..., : s // 16]]  # [B, N, 6, d]
    z = np.concatenate([source, probs @ book[teacher.classes.class_codes]], axis=-2)
    want = targets.decode_embeddings(teacher.module, params, jax.numpy.asarray(z))[..., s:]
    np.testing.assert_allclose(got, want, atol=1e-5)
    argmax = dataclasses.replace(heads, decoding="argmax").decode(out, batch, state.model_state)
    assert not np.allclose(got, argmax["forecast"], atol=1e-5)


def test_decoding_option_faithful_forces_argmax_and_bad_values_are_errors():
    config = forecast_config.get_config()
    assert forecast.decoding_of(config) == "expected"
    config.decoding = "argmax"
    assert forecast.decoding_of(config) == "argmax"
    config.decoding = "expected"
    config.faithful = True  # the original's prediction
    assert forecast.decoding_of(config) == "argmax"
    config.decoding = "mean"
    with pytest.raises(ValueError, match="config.decoding='mean'"):
        forecast.decoding_of(config)
    del config.decoding  # the config.json of a run trained before the option: argmax
    assert forecast.decoding_of(config) == "argmax"
    with pytest.raises(ValueError, match="config.decoding='mean'"):
        forecast.Heads(source_frames=96, decoding="mean")
    with pytest.raises(ValueError, match="faithful"):
        forecast.Heads(source_frames=96, faithful=True, decoding="expected")


def test_predict_returns_every_valid_test_window(loaded):
    trainer, state = loaded
    pred = trainer.predict(state, "test")
    windows, neurons = len(trainer.setup.dataset.splits["test"]), trainer.setup.num_neurons
    assert pred["forecast"].shape == (windows, neurons, 64)
    assert pred["quantized"].shape == (windows, neurons, 64)
    assert pred["codes"].shape == (windows, neurons, 10)


def test_architecture_mismatch_and_missing_init_from_are_clear_errors(
    mini_observatory, pretrained, tmp_path
):
    config = _config(mini_observatory, pretrained)
    config.model.d_model = 32
    with pytest.raises(ValueError, match="d_model"):
        forecast.build(config, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="config.init_from"):
        forecast.build(_config(mini_observatory), str(tmp_path / "b"))
