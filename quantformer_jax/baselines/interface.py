"""The call contract shared by the baselines: tasks, input checks, time marks, config sections.

Every baseline is called as `model.apply(variables, inputs, train=bool)` with
`inputs = dict(src [B, N, S], stim [B, stim_size])` (a `future` key may be present in train mode
for teacher-forced models; the models here never read it) and returns `{"forecast": [B, N, F]}`
(task 'forecast') or `{"logits": [B, N, 2]}` (task 'classify').
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

TASKS = ("forecast", "classify")

ConfigT = TypeVar("ConfigT")


def check_task(model_name: str, task: str) -> None:
    """Raises a ValueError naming the model when `task` is not 'forecast' or 'classify'."""
    if task not in TASKS:
        raise ValueError(f"{model_name}.task={task!r}; expected one of {TASKS}")


def unpack_inputs(
    inputs: Mapping[str, jax.Array], model_name: str, task: str
) -> tuple[jax.Array, jax.Array]:
    """Returns (src [B, N, S], stim [B, stim_size]) after checking the task, ranks and batch sizes.

    Any `future` entry is ignored on purpose: these baselines forecast from the source only.

    Raises:
        KeyError: a required key is missing.
        ValueError: an unknown task, a wrong rank or a mismatched batch size (the message names
            the field).
    """
    check_task(model_name, task)
    for key in ("src", "stim"):
        if key not in inputs:
            raise KeyError(f"{model_name}: inputs[{key!r}] is missing (got keys {sorted(inputs)})")
    src = jnp.asarray(inputs["src"], jnp.float32)
    stim = jnp.asarray(inputs["stim"], jnp.float32)
    if src.ndim != 3:
        raise ValueError(f"{model_name}: inputs['src'] must be [B, N, S], got shape {src.shape}")
    if stim.ndim != 2 or stim.shape[0] != src.shape[0]:
        raise ValueError(
            f"{model_name}: inputs['stim'] must be [B, stim_size] with B={src.shape[0]} "
            f"(from src), got shape {stim.shape}"
        )
    return src, stim


def time_marks(num_frames: int, frame_rate_hz: float) -> jax.Array:
    """Frame times in seconds, arange(T) / rate: [T] float32 (REFERENCE 7.B5).

    The original built them with a float `arange(0, T/30, 1/30)`, whose length can round to T + 1.
    """
    return jnp.arange(num_frames, dtype=jnp.float32) / jnp.float32(frame_rate_hz)


def two_class_logits(logit: jax.Array) -> jax.Array:
    """[...] single BCE logit -> [..., 2] = [0, l]; softmax-CE on it equals BCE on l."""
    return jnp.stack([jnp.zeros_like(logit), logit], axis=-1)


def config_from_section(cls: type[ConfigT], section: Any, overrides: dict[str, Any]) -> ConfigT:
    """Builds dataclass `cls` from the fields present in `section` (others keep their defaults).

    Keys of `section` that are not fields are ignored, because model sections are shared with
    other settings; `overrides` must name real fields.

    Raises:
        KeyError: an override names no field of `cls`.
    """
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise KeyError(f"{cls.__name__} has no fields {unknown}")
    values = {name: section[name] for name in names if name in section}
    values.update(overrides)
    return cls(**values)
