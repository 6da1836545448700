"""Command-line entry point: `python -m quantformer_jax.main --config=configs/X.py --workdir=W`.

The only flags of the project live here: `--config` (an ml_collections config file with
`get_config(arg)`; `--config.a.b=v` overrides; the config is locked, so an unknown key is an
error naming it) and `--workdir`. `config.task` selects the trainer module from `TRAINERS`;
each trainer module exposes `train_and_evaluate(config, workdir)`. Re-running the same command
resumes the run in `workdir`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from quantformer_jax import runtime

# task -> trainer module (a module with `train_and_evaluate(config, workdir)`).
# Adding a task is one line here.
TRAINERS = {
    "pretrain": "quantformer_jax.training.pretrain",
    "forecast": "quantformer_jax.training.forecast",
    "classify": "quantformer_jax.training.classify",
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run configuration file (configs/*.py[:switches]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def trainer_module(task: str):
    """The trainer module for `config.task`, with a clear error for an unknown task."""
    if task not in TRAINERS:
        raise ValueError(f"config.task={task!r} is not one of {sorted(TRAINERS)}")
    try:
        return importlib.import_module(TRAINERS[task])
    except ModuleNotFoundError as e:
        if e.name != TRAINERS[task]:
            raise
        raise ValueError(
            f"config.task={task!r}: trainer {TRAINERS[task]} does not exist yet"
        ) from e


def unknown_override_keys(config: ml_collections.ConfigDict, argv: list[str]) -> list[str]:
    """The `--config.a.b=v` overrides in `argv` whose key path is not in `config`."""
    unknown = []
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config.") :].split("=", 1)[0]
        node = config
        for part in path.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                unknown.append(f"config.{path}")
                break
            node = node[part]
    return unknown


def _load_config_file(argv: list[str]) -> ml_collections.ConfigDict | None:
    """Loads the `--config=path[:arg]` file of argv without its overrides (None if absent)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config="):
            value = arg[len("--config=") :]
        else:
            continue
        path, _, switches = value.partition(":")
        spec = importlib.util.spec_from_file_location("_run_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(switches or None)
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a readable error for a misspelt `--config.` override."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError):
        config = _load_config_file(argv)
        unknown = unknown_override_keys(config, argv) if config is not None else []
        if not unknown:
            raise
        sys.stderr.write(
            f"FATAL Flags parsing error: unknown config key(s) {', '.join(unknown)}; the config "
            "is locked, so overrides must name existing keys (see the config file).\n"
        )
        sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    runtime.tune_host_allocator()  # before jax allocates anything (see runtime.py)
    runtime.request_deterministic_ops()  # before jax starts its backends
    from quantformer_jax import parallel  # imports jax: after flag parsing

    parallel.initialize_distributed()
    import jax

    if not parallel.is_main_process():
        logging.set_verbosity(logging.WARNING)  # humans read process 0's log only
    config = _CONFIG.value
    workdir = _WORKDIR.value
    logging.info("Command: %s", " ".join(sys.argv))
    logging.info(
        "JAX process %d / %d; %d local / %d global devices: %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.local_devices(),
    )
    logging.info("Workdir %s; config:\n%s", os.path.abspath(workdir), config)
    trainer_module(config.task).train_and_evaluate(config, workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
