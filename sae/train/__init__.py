"""Training: run configs, the trainer loop, losses, schedules, checkpoints, metric sinks."""

from .run_config import RunConfig, SAESpec, load_run_config
from .trainer import Trainer, TrainingError, TrainResult, geometric_median, train

__all__ = ["RunConfig", "SAESpec", "TrainResult", "Trainer", "TrainingError", "geometric_median",
           "load_run_config", "train"]
