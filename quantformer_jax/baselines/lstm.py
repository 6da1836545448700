"""LSTM baselines: the autoregressive population forecaster and the per-neuron LSTM classifier.

REFERENCE.md 4.2 (`autoregressive_lstm`) and 4.3 (`lstm_classification`). Both follow the
finetuning call signature: `model.apply(variables, inputs, train=bool)` with
`inputs = dict(src [B, N, S], stim [B, D], future [B, N, F] only when train=True)`.

The LSTM cell is torch.nn.LSTM's (fused gate kernels in torch's i, f, g, o order; torch's two
bias vectors b_ih + b_hh are one here: the same function class). Initialisation follows torch
(REFERENCE.md 7, fidelity notes): LSTM weights and biases U(+-1/sqrt(hidden)), Linear and
Conv1d weights and biases U(+-1/sqrt(fan_in)).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from quantformer_jax import constants
from quantformer_jax.baselines.interface import config_from_section, unpack_inputs


@struct.dataclass
class LSTMConfig:
    """Both LSTM baselines; the defaults are the original CLI defaults (REFERENCE.md 4.1)."""

    hidden_size: int = 128  # LSTM width h; the classifier's conv widths are h, h/2, h/4, h/8
    num_layers: int = 2  # stacked LSTM layers (dropout 0 between them, as the original runs)
    forecast_frames: int = constants.FORECAST_FRAMES  # F, autoregressive rollout length
    # Reproduce the original's off-by-one evaluation rollout (REFERENCE.md 7.B1). Off = correct.
    faithful_rollout: bool = False
    bn_momentum: float = 0.9  # flax convention; torch BatchNorm1d momentum 0.1
    bn_epsilon: float = 1e-5

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> LSTMConfig:
        """Builds the config from a config section (fields present there) plus overrides.

        E.g. `LSTMConfig.from_config(config.lstm_config, faithful_rollout=config.faithful)`.
        """
        config = config_from_section(cls, section, overrides)
        if config.hidden_size < 8 or config.num_layers < 1 or config.forecast_frames < 1:
            raise ValueError(
                f"LSTMConfig: hidden_size must be >= 8 (classifier head h/8), num_layers and "
                f"forecast_frames >= 1; got {config}"
            )
        return config


def _uniform(fan_in: int) -> nn.initializers.Initializer:
    """torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = float(fan_in) ** -0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=_uniform(fan_in), bias_init=_uniform(fan_in), name=name)


class _LSTMCell(nn.Module):
    """torch.nn.LSTM's cell: fused gate kernels in torch's (i, f, g, o) order, one bias."""

    hidden: int

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, jax.Array], x: jax.Array) -> tuple[tuple, jax.Array]:
        c, h = carry  # [B, h] each
        init = _uniform(self.hidden)
        kernel_i = self.param("kernel_i", init, (x.shape[-1], 4 * self.hidden))
        kernel_h = self.param("kernel_h", init, (self.hidden, 4 * self.hidden))
        bias = self.param("bias", init, (4 * self.hidden,))
        gates = x @ kernel_i + h @ kernel_h + bias  # [B, 4h]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h


class _LSTMStack(nn.Module):
    """Stacked LSTM cells for one time step: (per-layer (c, h), x [B, D]) -> (states, h_top)."""

    hidden: int
    num_layers: int

    @nn.compact
    def __call__(self, states: tuple, x: jax.Array) -> tuple[tuple, jax.Array]:
        new_states = []
        for i, state in enumerate(states):
            state, x = _LSTMCell(self.hidden, name=f"layer_{i}")(state, x)  # [B, h]
            new_states.append(state)
        return tuple(new_states), x


def _zero_states(config: LSTMConfig, rows: int) -> tuple:
    zeros = jnp.zeros((rows, config.hidden_size), jnp.float32)
    return tuple((zeros, zeros) for _ in range(config.num_layers))


def _stim_features(config: LSTMConfig, stim: jax.Array) -> jax.Array:
    """Dense(stim -> h) when stim_size < h, else the raw stimulus (as the original). [B, D]."""
    if stim.shape[-1] < config.hidden_size:
        return _dense(config.hidden_size, stim.shape[-1], "stim_embedding")(stim)
    return stim


class _ARStep(nn.Module):
    """One time step: stacked LSTM cells on the population vector, then the stimulus head."""

    config: LSTMConfig
    num_neurons: int

    @nn.compact
    def __call__(self, carry: tuple, x: jax.Array) -> tuple[tuple, jax.Array]:
        states, stim_feat = carry  # per-layer (c, h) [B, h] each; [B, D']
        lstm = _LSTMStack(self.config.hidden_size, self.config.num_layers, name="lstm")
        states, top = lstm(states, x)  # x: the population vector [B, N] -> [B, h]
        head_in = jnp.concatenate([top, stim_feat], axis=-1)  # [B, h + D']
        out = _dense(self.num_neurons, head_in.shape[-1], "head")(head_in)  # [B, N]
        return (states, stim_feat), out


def _forced_body(step: nn.Module, carry: tuple, x: jax.Array) -> tuple[tuple, jax.Array]:
    return step(carry, x)


def _rollout_body(step: _ARStep, carry: tuple, _: None) -> tuple[tuple, jax.Array]:
    # `queue` holds the inputs of the coming steps: (last prediction,) for the correct rollout,
    # (input now, input next) for the faithful one, whose feedback lags one step more (B1).
    states, stim_feat, queue = carry
    (states, _), out = step((states, stim_feat), queue[0])
    return (states, stim_feat, queue[1:] + (out,)), out


_scan_kwargs = dict(variable_broadcast="params", split_rngs={"params": False})
_scan_forced = nn.scan(_forced_body, **_scan_kwargs)  # over time-major xs [T, B, D]


class AutoregressiveLSTM(nn.Module):
    """Population LSTM forecaster (REFERENCE.md 4.2); returns {"forecast": [B, N, F]}.

    train=True: teacher forcing on cat(src, future[..., :-1]) (S + F - 1 steps); the last F
    outputs predict future[..., 0..F-1]. train=False: autoregressive rollout that never reads
    `future`: the LSTM state after the S source frames predicts frame 0, and step t is fed the
    model's own prediction of frame t - 1 (lax.scan carrying the LSTM state: O(F)). With
    `faithful_rollout` it reproduces the original (B1): the source pass stops at frame S-2, the
    first output is returned as forecast frame 0, frame S-1 is fed next, and every later step is
    fed the prediction made two steps before.
    """

    config: LSTMConfig

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
        src, stim = unpack_inputs(inputs, "AutoregressiveLSTM", "forecast")
        batch, neurons, source_frames = src.shape
        frames = self.config.forecast_frames
        step = _ARStep(self.config, neurons, name="step")
        states = _zero_states(self.config, batch)
        stim_feat = _stim_features(self.config, stim)
        time_major = lambda x: jnp.transpose(x, (2, 0, 1))  # noqa: E731  [B, N, T] -> [T, B, N]

        if train:
            future = _future(inputs, (batch, neurons, frames))
            seq = jnp.concatenate([src, future[..., :-1]], axis=-1)  # [B, N, S + F - 1]
            _, outs = _scan_forced(step, (states, stim_feat), time_major(seq))  # [S+F-1, B, N]
            forecast = outs[source_frames - 1 :]  # [F, B, N]
        else:
            faithful = self.config.faithful_rollout
            if faithful and source_frames < 2:
                raise ValueError("AutoregressiveLSTM: faithful_rollout needs >= 2 source frames")
            warm = src[..., :-1] if faithful else src
            (states, _), outs = _scan_forced(step, (states, stim_feat), time_major(warm))
            first = outs[-1]  # [B, N]
            queue = (src[..., -1], first) if faithful else (first,)
            forecast = first[None]
            if frames > 1:
                rollout = nn.scan(_rollout_body, length=frames - 1, **_scan_kwargs)
                _, rest = rollout(step, (states, stim_feat, queue), None)  # [F - 1, B, N]
                forecast = jnp.concatenate([forecast, rest], axis=0)
        return {"forecast": jnp.transpose(forecast, (1, 2, 0))}  # [F, B, N] -> [B, N, F]


def _future(inputs: Mapping[str, jax.Array], shape: tuple[int, int, int]) -> jax.Array:
    if "future" not in inputs:
        raise KeyError("AutoregressiveLSTM: train=True needs inputs['future'] (teacher forcing)")
    future = jnp.asarray(inputs["future"], jnp.float32)
    if future.shape != shape:
        raise ValueError(
            f"AutoregressiveLSTM: inputs['future'] must be [B, N, F] = {shape} "
            f"(F = config.forecast_frames), got {future.shape}"
        )
    return future


class LSTMClassifier(nn.Module):
    """Per-neuron LSTM + neuron-axis convolutions (REFERENCE.md 4.3); {"logits": [B, N, 2]}.

    Each neuron's S source frames go through a shared LSTM(1 -> h, num_layers); its last hidden
    state is concatenated with Dense(stim -> h), then the "spatial encoder": three Conv1d (kernel
    3, padding 1) ALONG THE NEURON AXIS, widths 2h -> h -> h/2 -> h/4, each followed by ReLU and
    BatchNorm (this order, as the original), then Dense(h/4 -> h/8) -> ReLU -> Dense(2).
    The convolution mixes neurons that are adjacent in the experiment's arbitrary ROI order
    (REFERENCE.md 7.B9): reproduced as the original, with no claim that the order means anything.

    BatchNorm normalises each channel over (windows, neurons) like torch's BatchNorm1d; it uses
    batch statistics and updates the 'batch_stats' collection when train=True (apply with
    mutable=['batch_stats']), and the running averages when train=False. Differences from torch:
    flax's running variance is the biased batch variance (torch stores the unbiased one).
    `future` is never read.
    """

    config: LSTMConfig

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
        src, stim = unpack_inputs(inputs, "LSTMClassifier", "classify")
        batch, neurons, source_frames = src.shape
        hidden = self.config.hidden_size
        if hidden < 8:
            raise ValueError(f"LSTMClassifier: hidden_size must be >= 8 (head h/8), got {hidden}")
        # One univariate series per neuron: [B, N, S] -> [S, B*N, 1], time-major for the scan.
        x = jnp.transpose(src.reshape(batch * neurons, source_frames, 1), (1, 0, 2))
        lstm = _LSTMStack(hidden, self.config.num_layers, name="lstm")
        states, _ = _scan_forced(lstm, _zero_states(self.config, batch * neurons), x)
        last = states[-1][1].reshape(batch, neurons, hidden)  # top layer's last h: [B, N, h]
        stim_feat = _dense(hidden, stim.shape[-1], "stim_embedding")(stim)  # [B, h]
        stim_feat = jnp.broadcast_to(stim_feat[:, None], (batch, neurons, hidden))
        z = jnp.concatenate([last, stim_feat], axis=-1)  # [B, N, 2h]
        for i, width in enumerate((hidden, hidden // 2, hidden // 4)):
            fan_in = z.shape[-1] * 3
            conv = nn.Conv(
                width,
                kernel_size=(3,),
                padding=((1, 1),),
                kernel_init=_uniform(fan_in),
                bias_init=_uniform(fan_in),
                name=f"conv_{i}",
            )
            z = nn.relu(conv(z))  # [B, N, width]: the neuron axis is the conv's spatial axis
            z = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.config.bn_momentum,
                epsilon=self.config.bn_epsilon,
                name=f"bn_{i}",
            )(z)
        z = nn.relu(_dense(hidden // 8, z.shape[-1], "fc_0")(z))  # [B, N, h/8]
        return {"logits": _dense(2, z.shape[-1], "fc_1")(z)}  # [B, N, 2]
