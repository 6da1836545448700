"""End-to-end tests of the classification trainer (training/classify.py).

One runlocal pretraining workdir and one 2-step `configs/classify.py:runlocal` run with
`freeze_encoder` per module: metrics and test_metrics.json; the frozen encoder equals the
pretrained one after training while the heads moved (REFERENCE F13); a longer re-run resumes;
the test metrics agree with the predictions; a classifier's wrong output is a clear error.
"""

import json
import os

import jax
import numpy as np
import pytest

from configs import classify as classify_config
from quantformer_jax import metric_writer, metrics
from quantformer_jax.models import tokenizer
from quantformer_jax.training import classify, finetune


def _config(observatory, init_from="", **training):
    config = classify_config.get_config("runlocal")
    config.data.cache_dir = str(observatory)
    config.init_from = str(init_from)
    config.freeze_encoder = True
    config.training.update({"num_devices": 1, **training})
    return config


pytestmark = pytest.mark.usefixtures("jax_cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory, mini_observatory, pretrained):
    workdir = str(tmp_path_factory.mktemp("classify"))
    results = classify.train_and_evaluate(_config(mini_observatory, pretrained), workdir)
    return workdir, results


def test_run_writes_metrics_and_selected_test(run):
    workdir, results = run
    for name in ("accuracy", "precision", "recall", "f1", "balanced_accuracy"):
        assert 0.0 <= results[f"selected_test_{name}"] <= 1.0
    assert np.isfinite(results["val_balanced_accuracy"])
    payload = json.load(open(os.path.join(workdir, finetune.TEST_METRICS_FILE)))
    assert payload["selection_metric"] == "val_balanced_accuracy"
    steps = [r["step"] for r in metric_writer.read_metrics(workdir) if "train_loss" in r]
    assert steps == [1, 2]


def test_frozen_encoder_is_the_pretrained_one_and_the_heads_train(
    run, mini_observatory, pretrained
):
    workdir, _ = run
    trainer, state = finetune.load_run(classify.build, _config(mini_observatory), workdir)
    config = _config(mini_observatory, pretrained)
    tok = tokenizer.TokenizerConfig.from_config(config.model)
    reference, _ = finetune.load_pretrained(config, tok)
    assert int(state.step) == 2
    jax.tree.map(np.testing.assert_array_equal, state.params["encoder"], reference["encoder"])
    fresh = trainer.task.init_state()
    assert not np.allclose(state.params["head"]["kernel"], fresh.params["head"]["kernel"])


def test_test_metrics_agree_with_the_predictions(run, mini_observatory):
    workdir, results = run
    trainer, state = finetune.load_run(classify.build, _config(mini_observatory), workdir)
    pred = trainer.predict(state, "test")
    batches = len(list(trainer.setup.eval_batches("test")))
    assert batches > 1 and pred["pred"].shape[1] == trainer.setup.num_neurons
    # runlocal evaluates 1 batch (max_eval_steps): compare on those windows.
    first = pred["pred"][: trainer.setup.config.training.batch_size]
    labels = pred["labels"][: len(first)]
    expected = metrics.binary_metrics(first, labels)
    assert results["selected_test_accuracy"] == pytest.approx(expected["accuracy"])
    assert results["selected_test_f1"] == pytest.approx(expected["f1"])


def test_rerun_resumes(run, mini_observatory, pretrained):
    workdir, _ = run
    classify.train_and_evaluate(_config(mini_observatory, pretrained, num_epochs=2), workdir)
    steps = [r["step"] for r in metric_writer.read_metrics(workdir) if "train_loss" in r]
    assert steps == [1, 2, 3, 4]


def test_classifier_outputs_are_checked():
    heads = classify.Heads()
    batch = {"labels": np.zeros((2, 3), np.int32), "valid": np.ones(2, bool)}
    with pytest.raises(ValueError, match="'logits'"):
        heads.loss_fn({"forecast": np.zeros((2, 3, 64))}, batch, {})
    with pytest.raises(ValueError, match=r"\[B, N, 2\]"):
        heads.loss_fn({"logits": np.zeros((2, 3, 5))}, batch, {})
