"""Small configuration dataclasses, one per concern, and YAML loading with helpful errors.

A run's YAML file has the sections `sae`, `data`, `train` (and optional `eval`), each loaded into
the dataclass below; `--set section.field=value` overrides any field.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any

ACTIVATIONS = ("topk", "batchtopk", "jumprelu", "relu")
NORMALIZATIONS = ("none", "expected_norm")


class ConfigError(ValueError):
    """A configuration value or key a user must fix."""


@dataclass
class SAEConfig:
    """Architecture of one sparse autoencoder."""

    d_in: int
    """Width of the activations it reads (d_model for the residual stream)."""
    d_sae: int
    """Number of latents (dictionary size)."""
    activation: str = "topk"
    """One of topk, batchtopk, jumprelu, relu."""
    k: int = 32
    """Active latents per token for topk; the batch average for batchtopk."""
    jumprelu_init_threshold: float = 1e-3
    """Initial JumpReLU threshold (all latents)."""
    jumprelu_bandwidth: float = 1e-3
    """Width of the rectangle kernel in JumpReLU's straight-through threshold gradient."""
    normalize_input: str = "none"
    """`expected_norm` scales inputs so their mean norm is sqrt(d_in); folded into the weights at save."""
    hook_name: str = ""
    """TransformerLens hook the SAE reads, e.g. blocks.6.hook_resid_post (metadata)."""
    model_name: str = ""
    """Model the activations came from (metadata)."""

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.d_sae < 1:
            raise ConfigError(f"sae.d_in and sae.d_sae must be positive, got {self.d_in}, {self.d_sae}.")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"sae.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}."
            )
        if self.activation in ("topk", "batchtopk") and not 1 <= self.k <= self.d_sae:
            raise ConfigError(f"sae.k must be in [1, d_sae={self.d_sae}], got {self.k}.")
        if self.normalize_input not in NORMALIZATIONS:
            raise ConfigError(
                f"sae.normalize_input must be one of {', '.join(NORMALIZATIONS)}, "
                f"got {self.normalize_input!r}."
            )
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold <= 0:
            raise ConfigError("sae.jumprelu_bandwidth and sae.jumprelu_init_threshold must be > 0.")


@dataclass
class DataConfig:
    """Where training activations come from."""

    cache: str = ""
    """An activation cache folder made by `sae cache`. Leave empty to stream from the model."""
    model: str = "smollm2-135m-instruct"
    """Model spec when streaming (hub name, local folder, .gguf, or the bundled alias)."""
    source: str = ""
    """Text source when streaming (.txt, .jsonl, .csv/.tsv, or hf:NAME[:config][:split])."""
    hooks: list[str] = field(default_factory=list)
    """Hooks to harvest when streaming; with a cache, defaults to all of its hooks."""
    context: int = 128
    """Tokens per block when streaming."""
    text_field: str = "text"
    """Field or column holding the text in .jsonl/.csv/.tsv sources."""
    harvest_batch: int = 8
    """Blocks per model forward when streaming."""
    holdout_frac: float = 0.05
    """Fraction of the rows kept out of training for evaluation (the last rows of the cache)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_frac < 0.5:
            raise ConfigError(f"data.holdout_frac must be in [0, 0.5), got {self.holdout_frac}.")
        if not self.cache and not self.source:
            raise ConfigError("data needs either `cache` (a cache folder) or `source` (a text file to stream).")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of a training run."""

    tokens: int = 1_000_000
    """Training tokens (activation rows) in total."""
    batch_size: int = 4096
    """Rows per optimisation step."""
    lr: float = 2e-4
    """Peak Adam learning rate."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam beta1, beta2."""
    warmup_steps: int = 100
    """Linear LR warm-up steps."""
    decay_start: float = 0.8
    """Fraction of the run after which the LR decays linearly to 0."""
    aux_k: int = 256
    """Latents in the AuxK loss (topk family); 0 turns it off."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_tokens: int = 1_000_000
    """A latent that has not fired in this many training tokens counts as dead."""
    sparsity_coef: float = 5.0
    """Weight of the L1 (relu) or L0 (jumprelu) penalty."""
    sparsity_warmup_steps: int = 1000
    """Steps over which the sparsity penalty ramps linearly from 0."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm and remove the parallel gradient component."""
    init_b_dec: str = "geometric_median"
    """`geometric_median`, `mean` or `zeros`: how b_dec starts."""
    seed: int = 0
    """Seed for initialisation and data order."""
    shuffle_buffer: int = 262_144
    """Rows in the shuffle buffer when reading a cache."""
    nonfinite: str = "skip"
    """What to do with NaN/inf activation rows: `skip` (drop and count) or `stop`."""
    log_every: int = 10
    """Steps between metric lines in metrics.jsonl."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0: only at the end)."""
    out: str = "runs/sae"
    """Run folder: checkpoints, metrics.jsonl, final SAE folders, report.html."""
    sinks: list[str] = field(default_factory=list)
    """Extra metric sinks besides metrics.jsonl: `wandb`, `tensorboard`."""
    device: str = "auto"
    """`auto` (cuda when available), `cpu`, or `cuda[:N]`."""
    encoder_dtype: str = "float32"
    """`float32` or `bfloat16`: dtype of the encoder GEMM's inputs and of the decoder rows the
    sparse decodes read (topk family). Weights, Adam state, accumulation, the loss and gradients
    stay fp32 (master weights); bfloat16 is the fast setting on GPUs."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # YAML gives lists
        if self.tokens < self.batch_size:
            raise ConfigError(f"train.tokens ({self.tokens}) must be at least train.batch_size ({self.batch_size}).")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}.")
        if self.encoder_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"train.encoder_dtype must be float32 or bfloat16, got {self.encoder_dtype!r}.")
        if self.nonfinite not in ("skip", "stop"):
            raise ConfigError(f"train.nonfinite must be `skip` or `stop`, got {self.nonfinite!r}.")
        if self.init_b_dec not in ("geometric_median", "mean", "zeros"):
            raise ConfigError(
                f"train.init_b_dec must be geometric_median, mean or zeros, got {self.init_b_dec!r}."
            )
        for sink in self.sinks:
            if sink not in ("wandb", "tensorboard"):
                raise ConfigError(f"train.sinks entries must be wandb or tensorboard, got {sink!r}.")


@dataclass
class EvalConfig:
    """Evaluation after training."""

    tokens: int = 8192
    """Held-out tokens for the CE-loss-recovered eval with the SAE spliced into the model (0: skip)."""
    source: str = ""
    """Held-out text; defaults to the training source."""
    context: int = 128
    """Tokens per block."""
    batch: int = 8
    """Blocks per forward."""


# Names other tools use for our fields (SAELens, sparsify, papers).
_ALIASES = {"learning_rate": "lr", "batch": "batch_size", "train_batch_size_tokens": "batch_size",
            "num_latents": "d_sae", "dict_size": "d_sae", "width": "d_sae", "n_latents": "d_sae",
            "topk": "k", "top_k": "k", "l1_coefficient": "sparsity_coef", "l1_coef": "sparsity_coef",
            "l0_coefficient": "sparsity_coef", "auxk": "aux_k", "auxk_alpha": "aux_coef",
            "training_tokens": "tokens", "total_tokens": "tokens", "architecture": "activation",
            "hook": "hook_name", "lr_warm_up_steps": "warmup_steps", "dead_feature_window": "dead_tokens"}


def closest_key(key: str, valid: list[str]) -> str:
    """A 'did you mean' suffix naming the closest valid key, or an empty string."""
    if _ALIASES.get(key) in valid:
        return f" Did you mean {_ALIASES[key]!r}?"
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""


def build(cls: type, values: dict[str, Any], section: str) -> Any:
    """`cls(**values)` after checking every key exists, naming the closest one when it does not."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(
                f"Unknown key {section}.{key}.{closest_key(key, names)} Valid keys: {', '.join(names)}."
            )
    types = typing.get_type_hints(cls)
    values = {k: _coerce(v, types[k], f"{section}.{k}") for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"In section {section!r}: {err}") from err


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn YAML/CLI strings into the field's type (PyYAML reads `4e-4` as a string)."""
    if hint in (float, int) and isinstance(value, str):
        try:
            number = float(value.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}.") from None
        return number if hint is float else int(number)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value.lower() in ("true", "1", "yes")
    if hint in (int, float) and not isinstance(value, (int, float)) or isinstance(value, bool) and hint in (int, float):
        raise ConfigError(f"{where} must be a number, got {value!r}.")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
