"""A training job on the GPU worker: the runner frees its engines, the trainer runs alone, and the
next generation job loads its engine again.

The rule (docs/training.md): a training run holds the GPU exclusively. It queues like any job;
the jobs submitted after it wait behind it, and a stop request ends it after the update in
progress with its last checkpoint written and its adapter exported.
"""

from __future__ import annotations

from collections.abc import Callable

from acestep.errors import JobError
from acestep.settings import lora_dir, training_dir
from acestep.training.progress import TrainingProgress
from acestep.training.request import TrainingRequest

Report = Callable[[TrainingProgress], None]


def run_training(
    checkpoint: str,
    model: str,
    device: str,
    dtype: str | None,
    request: TrainingRequest,
    dataset: str,
    report: Report,
) -> dict:
    """Train on the DiT ``model`` of ``checkpoint``; the final ``TrainingProgress`` as a dict."""
    from acestep.checkpoints import resolve
    from acestep.memory.devices import resolve_device
    from acestep.memory.precision import precision_plan
    from acestep.training.cache import Stopped
    from acestep.training.dataset import open_dataset
    from acestep.training.trainer import Trainer

    paths = resolve(checkpoint, model)
    target = resolve_device(device)
    trainer = Trainer(
        request,
        open_dataset(dataset),
        paths,
        target,
        precision_plan(target, dtype),
        training_dir(),
        lora_dir(),
        on_progress=report,
    )
    try:
        return trainer.run().progress.as_dict()
    except Stopped as exc:
        raise JobError("cancelled", f"training stopped before its first update ({exc})") from None


__all__ = ["run_training"]
