"""The optimizer and the learning-rate schedule of a run.

AdamW and Adafactor are torch's own; 8-bit AdamW is bitsandbytes' (an optional install). The
schedule is upstream's: a linear warmup from a tenth of the rate over ``warmup_steps`` (at most a
tenth of the run), then a cosine down to 1 % of it. It is a function of the step alone, so its
saved state is just the step.
"""

from __future__ import annotations

import math

import torch

from acestep.training.adapter import TrainingError
from acestep.training.request import TrainingRequest


def build_optimizer(request: TrainingRequest, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if request.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=request.lr, weight_decay=request.weight_decay)
    if request.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=request.lr, weight_decay=request.weight_decay)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise TrainingError("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
    return bnb.optim.AdamW8bit(params, lr=request.lr, weight_decay=request.weight_decay)


def schedule_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate's multiplier at ``step`` (0-based: the update about to be made)."""
    if warmup > 0 and step < warmup:
        return 0.1 + 0.9 * step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(
    optimizer: torch.optim.Optimizer, request: TrainingRequest, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(request.warmup_steps, max(1, total // 10))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(step, warmup, total))


__all__ = ["build_optimizer", "build_schedule", "schedule_factor"]
