"""Learning-rate and penalty schedules (pure functions of the step)."""

from __future__ import annotations


def lr_at(step: int, total_steps: int, peak: float, warmup_steps: int, decay_start: float) -> float:
    """Linear warm-up to `peak`, constant, then linear decay to 0 over the last (1 - decay_start)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_from = int(decay_start * total_steps)
    if step >= decay_from and total_steps > decay_from:
        return peak * max(0.0, (total_steps - step) / (total_steps - decay_from))
    return peak


def penalty_at(step: int, coef: float, warmup_steps: int) -> float:
    """Sparsity coefficient ramped linearly from 0 to `coef` over `warmup_steps`."""
    if warmup_steps <= 0:
        return coef
    return coef * min(1.0, (step + 1) / warmup_steps)
