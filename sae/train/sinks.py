"""Metric sinks behind one interface: metrics.jsonl always, wandb / tensorboard when asked.

The trainer calls `sink.log(step, metrics)` on rank 0 only; sinks that are not asked for are
never imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol


class MetricSink(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON object per log step to `path` (flushed, so a crash loses nothing logged)."""

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = path
        if truncate_after_step is not None and path.is_file():
            # A resumed run rewrites the steps after its checkpoint.
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= truncate_after_step]
            path.write_text("".join(line + "\n" for line in kept))
        self.fh = path.open("a")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.fh.write(json.dumps({"step": step, **metrics}) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import wandb

        self.run = wandb.init(dir=str(run_dir), config=config, project="sae-toolkit")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorboardSink:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class MultiSink:
    """Fans one log call out to several sinks."""

    def __init__(self, sinks: list[MetricSink]):
        self.sinks = sinks

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def make_sinks(run_dir: Path, names: list[str], config: dict[str, Any],
               resume_step: int | None) -> MultiSink:
    sinks: list[MetricSink] = [JsonlSink(run_dir / "metrics.jsonl", resume_step)]
    for name in names:
        sinks.append(WandbSink(run_dir, config) if name == "wandb" else TensorboardSink(run_dir))
    return MultiSink(sinks)
