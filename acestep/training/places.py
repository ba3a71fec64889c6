"""Where a run's files live (torch-free): the dataset it reads, its run folder, its adapter's name.

Datasets, caches and runs live under the training folder (``ACESTEP_TRAINING_DIR``); finished
adapters go to the LoRA folder, where ``acestep loras`` and generation find them. A face that
takes paths from the network confines them to the training folder (``confined=True``).
"""

from __future__ import annotations

import re
from pathlib import Path

from acestep.training.request import TrainingRequest

DATASET_FILE = "dataset.json"  # the name a dataset saved into a folder takes
RUNS_FOLDER = "runs"  # the training folder's own folders (not datasets)
CACHE_FOLDER = "cache"


class PlaceError(ValueError):
    """A path that may not be used, with the reason."""


def dataset_path(value: str, training_dir: Path, confined: bool) -> Path:
    """A dataset file or folder: relative paths are under the training folder; with ``confined``,
    anything that resolves outside it is refused."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = training_dir / path
    resolved = path.resolve()
    if confined and not resolved.is_relative_to(training_dir.resolve()):
        raise PlaceError(f"dataset {value!r} is outside the training folder ({training_dir})")
    if not resolved.exists():
        raise PlaceError(f"dataset {value!r} not found (looked for {resolved})")
    if resolved.is_dir() and (resolved / DATASET_FILE).is_file():
        return resolved / DATASET_FILE  # a folder a dataset was saved into (upstream's tensor_dir)
    return resolved


def adapter_name(request: TrainingRequest, dataset_name: str) -> str:
    """The request's ``output_name``, else ``<dataset>-<lora|lokr>`` made a plain name."""
    if request.output_name:
        return request.output_name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset_name).strip("-._")[:56] or "dataset"
    return f"{stem}-{request.adapter_type}"


def run_dir(training_dir: Path, name: str) -> Path:
    return training_dir / RUNS_FOLDER / name


def stop_file(run: Path) -> Path:
    """Its presence asks the run to stop after the update in progress (a file, so a stop reaches
    a trainer in another process without interrupting it)."""
    return run / "STOP"


def request_stop(request: TrainingRequest, training_dir: Path) -> None:
    if not request.output_name:
        return
    run = run_dir(training_dir, request.output_name)
    run.mkdir(parents=True, exist_ok=True)
    stop_file(run).touch()


def clear_stop(request: TrainingRequest, training_dir: Path) -> None:
    """A stale stop request (from a run stopped before) must not end the next run at once."""
    if request.output_name:
        stop_file(run_dir(training_dir, request.output_name)).unlink(missing_ok=True)


__all__ = [
    "CACHE_FOLDER",
    "DATASET_FILE",
    "RUNS_FOLDER",
    "PlaceError",
    "adapter_name",
    "clear_stop",
    "dataset_path",
    "request_stop",
    "run_dir",
    "stop_file",
]
