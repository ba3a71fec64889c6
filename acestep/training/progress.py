"""What a training run reports while it runs and when it ends (torch-free; crosses the worker pipe
as JSON and is what every face shows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

MAX_LOSS_POINTS = 1000  # the loss history kept for plots (upstream keeps the last 1000 too)


@dataclass
class TrainingProgress:
    stage: str = "queued"  # preprocess_vae | preprocess_text | preprocess_condition | train | done
    fraction: float = 0.0  # of the stage
    step: int = 0  # optimizer updates done
    total_steps: int = 0
    epoch: int = 0  # 1-based epoch of the last update
    epochs: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    steps_per_second: float | None = None
    losses: list[list[float]] = field(default_factory=list)  # [step, loss] pairs
    checkpoints: list[int] = field(default_factory=list)  # steps with a checkpoint
    samples: int = 0  # tracks in the dataset
    adapter: str | None = None  # the adapter's name in the LoRA folder, once written
    stopped: bool = False  # ended by a stop request (its last checkpoint kept)
    preprocess: dict = field(default_factory=dict)  # {"computed": {...}, "reused": {...}}

    def add_loss(self, step: int, loss: float) -> None:
        self.losses.append([step, loss])
        del self.losses[:-MAX_LOSS_POINTS]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingProgress:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


__all__ = ["MAX_LOSS_POINTS", "TrainingProgress"]
