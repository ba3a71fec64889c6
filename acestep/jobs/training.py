"""The checks a training run passes before it is queued (torch-free; the API process runs them).

An empty or unreadable dataset, a path outside the training folder (from the network), a run
name that already has checkpoints without ``resume``, a DiT that is not served, and a rank or crop
that does not fit the GPU are refused here, with the reason, before any work starts. Only one
training run may be queued or running at a time, as upstream allows one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from acestep.checkpoints.layout import CheckpointPaths
from acestep.memory.training_fit import DitShape, check_fit, estimate_gib
from acestep.training import checkpoint_files
from acestep.training.dataset import open_dataset, require_usable
from acestep.training.places import adapter_name, dataset_path, run_dir
from acestep.training.request import TrainingRequest

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class PreparedRun:
    request: TrainingRequest  # with its output_name filled in
    dataset: str  # the dataset file or folder, resolved
    samples: int
    estimate_gib: float


def prepare_run(
    request: TrainingRequest,
    training_dir: Path,
    confined: bool,
    checkpoint: CheckpointPaths | None,
    gpu_gib: float | None,
    dtype: str = "bfloat16",
) -> PreparedRun:
    """The run as it will be queued; ``ValueError`` (a 400) with the reason otherwise."""
    path = dataset_path(request.dataset, training_dir, confined)
    dataset = open_dataset(path)
    require_usable(dataset)
    # The dataset as a resolved path and the DiT by its folder name: a run's identity (what a
    # resume must match) is then the same whichever face started it and however it spelled them.
    update = {"output_name": adapter_name(request, dataset.name), "dataset": str(path)}
    if checkpoint is not None:
        update["model"] = checkpoint.dit_name
    request = request.model_copy(update=update)
    has_checkpoints = bool(checkpoint_files.steps(run_dir(training_dir, request.output_name)))
    if request.preprocess_only:
        pass  # no run folder is written: the cache only
    elif has_checkpoints and not request.resume:
        raise ValueError(
            f"a run named {request.output_name!r} already has checkpoints; resume it (resume=true) "
            "or choose another output_name"
        )
    elif request.resume and not has_checkpoints:
        raise ValueError(f"nothing to resume: the run {request.output_name!r} has no checkpoint")
    estimate = 0.0
    if checkpoint is not None:
        shape = DitShape.from_config(checkpoint.dit_config)
        estimate = estimate_gib(
            shape,
            request.rank,
            request.crop_seconds,
            request.train_batch_size,
            request.gradient_checkpointing,
            DTYPE_BYTES.get(dtype, 2),
        )
        check_fit(gpu_gib, estimate, request.gradient_checkpointing)
    return PreparedRun(request, str(path), len(dataset.samples), round(estimate, 2))


__all__ = ["PreparedRun", "prepare_run"]
