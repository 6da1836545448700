"""The model factory of the finetuning and baseline trainers: `config.model_class` -> a model.

Every model the forecasting and classification trainers run comes from `model_from_config`:

* trained models (flax.linen, `model.apply(variables, inputs, train=bool)`):
  `quantcoder` (models/quantcoder.py), `autoregressive_lstm` and `lstm_classifier`
  (baselines/lstm.py), `informer`, `autoformer`, `crossformer` (baselines/*.py);
* parameter-free models (baselines/naive.py) wrapped in `NaiveModel`, which has the same
  `init`/`apply` surface with no variables: `persistence`, `source_mean`, `trial_average`
  (per-condition train average; needs `fit`) and `majority` (per-neuron majority label; `fit`).

Each trained model reads its hyperparameters from `config.<model_section>` (e.g.
`config.informer_config`); `default_section(name)` gives that section with the model's own
dataclass defaults, which are the original CLI defaults (REFERENCE.md 4.1, B10). The section of a
model is shared by both tasks (`lstm_config` serves both LSTMs).

Outputs: forecasting models return {"forecast": [B, N, F]} except QuantCoder, which returns
{"code_logits": [B, N, F // P, C], ...}; classifiers return {"logits": [B, N, 2]}.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

TRAINED_MODELS = (
    "quantcoder",
    "autoregressive_lstm",
    "lstm_classifier",
    "informer",
    "autoformer",
    "crossformer",
)
NAIVE_MODELS = ("persistence", "source_mean", "trial_average", "majority")
MODEL_CLASSES = TRAINED_MODELS + NAIVE_MODELS

# Which tasks each model can do (the original's allowed combinations, REFERENCE.md section 4).
TASKS = {
    "quantcoder": ("forecast", "classify"),
    "autoregressive_lstm": ("forecast",),
    "lstm_classifier": ("classify",),
    "informer": ("forecast", "classify"),
    "autoformer": ("forecast", "classify"),
    "crossformer": ("forecast", "classify"),
    "persistence": ("forecast",),
    "source_mean": ("forecast",),
    "trial_average": ("forecast",),
    "majority": ("classify",),
}

# model class -> (module, flax class, config dataclass, config section)
_TRAINED = {
    "quantcoder": ("quantformer_jax.models.quantcoder", "QuantCoder", "QuantCoderConfig",
                   "quantcoder_config"),
    "autoregressive_lstm": ("quantformer_jax.baselines.lstm", "AutoregressiveLSTM", "LSTMConfig",
                            "lstm_config"),
    "lstm_classifier": ("quantformer_jax.baselines.lstm", "LSTMClassifier", "LSTMConfig",
                        "lstm_config"),
    "informer": ("quantformer_jax.baselines.informer", "Informer", "InformerConfig",
                 "informer_config"),
    "autoformer": ("quantformer_jax.baselines.autoformer", "Autoformer", "AutoformerConfig",
                   "autoformer_config"),
    "crossformer": ("quantformer_jax.baselines.crossformer", "Crossformer", "CrossformerConfig",
                    "crossformer_config"),
}  # fmt: skip


def check_model_class(name: str, task: str | None = None) -> None:
    """Raises a ValueError naming `config.model_class` for an unknown model or a wrong task."""
    if name not in MODEL_CLASSES:
        raise ValueError(
            f"config.model_class={name!r} is not a known model; known: {', '.join(MODEL_CLASSES)}"
        )
    if task is not None and task not in TASKS[name]:
        raise ValueError(
            f"config.model_class={name!r} cannot run config.task={task!r}; it supports "
            f"{', '.join(TASKS[name])}"
        )


def is_naive(name: str) -> bool:
    """True for the parameter-free models (evaluated without training steps)."""
    check_model_class(name)
    return name in NAIVE_MODELS


def section_name(name: str) -> str | None:
    """The config section holding `name`'s hyperparameters (None for naive models)."""
    check_model_class(name)
    return _TRAINED[name][3] if name in _TRAINED else None


def _import(name: str, attr: str) -> Any:
    module_name = _TRAINED[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise ValueError(
            f"config.model_class={name!r}: its module {module_name} does not exist yet"
        ) from e
    if not hasattr(module, attr):
        raise ValueError(f"config.model_class={name!r}: {module_name} defines no {attr}")
    return getattr(module, attr)


def config_class(name: str) -> type:
    """The hyperparameter dataclass of a trained model."""
    check_model_class(name)
    if name not in _TRAINED:
        raise ValueError(f"config.model_class={name!r} is parameter-free: it has no config")
    return _import(name, _TRAINED[name][2])


def default_section(name: str) -> ml_collections.ConfigDict:
    """`config.<section>` for a trained model, holding every field of its config dataclass."""
    values = {}
    for field in dataclasses.fields(config_class(name)):
        if field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
    return ml_collections.ConfigDict(values)


class NaiveModel:
    """A parameter-free predictor (baselines/naive.py) with the trained models' call surface.

    `init` returns no variables and `apply(variables, inputs, train=...)` returns the
    predictor's output, so the trainers' steps run it unchanged (zero training steps).
    `fit(train_split)` builds the tables of `trial_average` and `majority`; the others ignore it.
    """

    def __init__(self, name: str, predictor: Any):
        self.name = name
        self.predictor = predictor
        self.needs_fit = hasattr(predictor, "fit")
        self.fitted = not self.needs_fit

    def fit(self, train_split: Any) -> NaiveModel:
        if self.needs_fit:
            self.predictor.fit(train_split)
            self.fitted = True
        return self

    def init(self, rngs: Any, inputs: Mapping[str, jax.Array], *, train: bool = False) -> dict:
        del rngs, inputs, train
        return {}

    def apply(
        self,
        variables: Mapping[str, Any],
        inputs: Mapping[str, jax.Array],
        *,
        train: bool = False,
        rngs: Any = None,
        mutable: Any = False,
    ) -> Any:
        del variables, train, rngs
        if not self.fitted:
            raise RuntimeError(f"naive model {self.name!r} used before fit(train_split)")
        out = dict(self.predictor.predict(inputs))
        return (out, {}) if mutable else out


def _naive(name: str, config: ml_collections.ConfigDict) -> NaiveModel:
    from quantformer_jax.baselines import naive

    frames = int(config.data.forecast_frames)
    if name == "persistence":
        predictor = naive.Persistence(frames)
    elif name == "source_mean":
        predictor = naive.SourceMean(frames)
    elif name == "trial_average":
        predictor = naive.ConditionAverage(int(config.data.source_frames))
    else:
        predictor = naive.MajorityClassifier(per_neuron=True)
    return NaiveModel(name, predictor)


def _overrides(name: str, config: ml_collections.ConfigDict, fields: set[str]) -> dict[str, Any]:
    """Values every model takes from the shared config rather than its own section."""
    out = {}
    if "forecast_frames" in fields:
        out["forecast_frames"] = int(config.data.forecast_frames)
    if name == "autoregressive_lstm" and "faithful_rollout" in fields:
        out["faithful_rollout"] = bool(config.faithful)  # REFERENCE B1
    return out


def model_from_config(
    config: ml_collections.ConfigDict,
    num_neurons: int,
    *,
    num_classes: int | None = None,
) -> Any:
    """Builds the model `config.model_class` names, for `config.task`.

    Args:
        config: the run config (`model_class`, `task`, the model's section, `data`, `model`).
        num_neurons: N of the experiment (QuantCoder's neuron-embedding table).
        num_classes: code classes C of the forecasting QuantCoder (from the teacher's train
            codes, training/targets.py); ignored by the other models.

    Returns:
        A flax module, or a `NaiveModel`.

    Raises:
        ValueError: unknown `config.model_class`, a task the model cannot do, or a model whose
            module has not been written.
    """
    name = str(config.model_class)
    task = str(config.task)
    check_model_class(name, task)
    if name in NAIVE_MODELS:
        return _naive(name, config)
    if name == "quantcoder":
        from quantformer_jax.models import quantcoder

        return quantcoder.from_config(
            config, num_neurons=num_neurons, num_classes=num_classes, task=task
        )
    cls = config_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    section = config.get(section_name(name)) or ml_collections.ConfigDict()
    model_config = cls.from_config(section, **_overrides(name, config, fields))
    module = _import(name, _TRAINED[name][1])
    module_fields = {f.name for f in dataclasses.fields(module)}
    if "task" in module_fields:
        return module(config=model_config, task=task)
    return module(config=model_config)
