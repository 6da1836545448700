"""Shared config pieces: data, tokenizer model, optimizer, training loop, and `parse_arg`.

Every run config (pretrain.py, forecast.py, classify.py, baseline.py) starts from
`get_base_config()` and changes what it needs. Coarse switches go after the colon
(`configs/forecast.py:runlocal`), fine ones with `--config.data.forecast_frames=48`.
"""

from __future__ import annotations

import ml_collections

from quantformer_jax import constants


def parse_arg(arg: str | None, **defaults):
    """Parses 'a=1,b,c=x' into a ConfigDict over `defaults` (bare names mean True).

    Unknown names are an error that names the key, so a typo never passes silently.
    """
    parsed = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return parsed
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        if key not in defaults:
            raise KeyError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not _:
            parsed[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {key!r} expects a boolean, got {value!r}")
            parsed[key] = value.lower() in ("true", "1")
        elif isinstance(default, int):
            parsed[key] = int(value)
        elif isinstance(default, float):
            parsed[key] = float(value)
        else:
            parsed[key] = value
    return parsed


def data_config() -> ml_collections.ConfigDict:
    """Where the data comes from and how trial windows are made (REFERENCE.md section 1)."""
    c = ml_collections.ConfigDict()
    # An allensdk-layout cache directory (manifest.json + ophys_experiment_data/<id>.nwb).
    # Empty = the simulated Observatory at runs/observatory/<simulated_size>-seed<simulated_seed>,
    # built on first use.
    c.cache_dir = ""
    c.simulated_size = "mini"  # mini | full
    c.simulated_seed = 0
    c.stimulus = "drifting_gratings"
    # Pretraining: experiments of these containers (empty = every container in the cache).
    c.container_ids = ()
    # Finetuning / baselines: one container (0 = the first container in the cache).
    c.container_id = 0
    c.trace_format = "corrected_fluorescence_dff"  # or "dff" (Allen's stored dF/F)
    c.source_frames = constants.SOURCE_FRAMES
    c.forecast_frames = constants.FORECAST_FRAMES
    c.baseline_frames = constants.BASELINE_FRAMES
    c.label_format = "tsai_wen"
    c.label_threshold = constants.ACTIVATION_THRESHOLD
    c.stim_features = "gratings4"
    c.val_fraction = 0.15  # last 15 % of train trials (in time) -> validation split
    c.leak_free = True  # also drop train/val windows that overlap test windows
    c.f0_eps = 0.0  # >0: windows with f0 <= f0_eps are counted and excluded (off = as original)
    c.balance_pretraining = True  # active rows + as many random inactive rows (original)
    c.row_buckets = (256, 512, 1024, 2048, 4096)  # pretraining rows are padded to one of these
    c.processed_cache_dir = ""  # empty = <cache_dir>/processed_windows
    return c


def tokenizer_config() -> ml_collections.ConfigDict:
    """QuantFormer tokenizer (REFERENCE.md section 2.4) at the paper's size."""
    c = ml_collections.ConfigDict()
    c.patch_len = constants.PATCH_LEN
    c.d_model = 128
    c.num_heads = 8
    c.num_layers = 2  # encoder and decoder each
    c.d_ff = 512
    c.dropout = 0.0
    c.codebook_size = 512
    c.affine_lr = 10.0
    c.sync_nu = 0.2
    c.replace_timeout = 20
    c.replace_rho = 0.01
    c.beta = 1.0
    c.vq_loss = "reference"  # reference (original STE-output losses) | textbook
    c.mask_ratio = 0.2
    c.masking = "random"  # random | causal | peaks
    c.num_patches = constants.NUM_PATCHES  # L of a full window; positional tables have L + 1 rows
    c.ablate_quantizer = False  # z_q = z_e (the original's --ablate-quantizer)
    c.dtype = "float32"  # computation dtype (params stay float32), e.g. "bfloat16"
    c.precision = "default"  # matmul precision: default | high | highest
    return c


def optimizer_config(weight_decay: float = 0.0) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "adam"
    c.learning_rate = 1e-4
    c.b1 = 0.9
    c.b2 = 0.999
    c.weight_decay = weight_decay  # torch-Adam coupled L2, applied to trainable params only
    c.grad_clip_norm = 0.0  # 0 = off
    c.eps = 1e-8  # Adam epsilon (torch default)
    return c


def training_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.batch_size = 32  # windows per global batch
    c.num_epochs = 200
    c.eval_every_epochs = 1
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.max_to_keep = 3
    c.parallel = "jit"  # jit (Mesh + NamedSharding) | pmap
    c.num_plot_examples = 8
    c.num_devices = 0  # local devices used for data parallelism (0 = all)
    c.max_steps_per_epoch = 0  # >0: cut every epoch after this many steps (runlocal)
    c.max_eval_steps = 0  # >0: evaluate only the first batches of a split (runlocal)
    c.patience = 0  # >0: stop after this many evaluations without improvement
    c.progress_bar = True  # tqdm bars (shown only on a terminal)
    return c


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = ""  # pretrain | forecast | classify
    config.seed = constants.DEFAULT_SEED
    config.faithful = False  # reproduce the original code's bugs where the paper depends on them
    config.init_from = ""  # a pretraining workdir to initialise the encoder/decoder/codebook from
    config.data = data_config()
    config.model = tokenizer_config()
    config.optimizer = optimizer_config()
    config.training = training_config()
    return config
