"""What the training and dataset routes read and answer, torch-free: paths under the training
folder, and upstream ACE-Step 1.5's shapes (its ``/v1/training/status``, its dataset samples) built
from a training ``Job`` and a ``Dataset``.

Upstream keys keep their meaning; acestep's extras (``task_id``, ``state``, ``stage``, ``progress``,
``checkpoints``, ``adapter``, ``stopped``...) are added beside them. The MCP tools answer the same
shapes, so an agent reads what a REST client reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acestep.errors import JobErrorKind, shown
from acestep.jobs.failures import Refusal, RefusalCause
from acestep.jobs.uploads import UploadError, confine
from acestep.settings import training_dir
from acestep.tasks import MAX_PATH_CHARS
from acestep.training.dataset import Dataset
from acestep.training.progress import TrainingProgress
from acestep.training.request import TrainingRequest
from acestep.training.sample import upstream_entry
from acestep.worker.job import Job, JobState

# Upstream's names for a preprocessing task's state (its /v1/dataset/preprocess_status).
PREPROCESS_STATUS = {"queued": "queued", "running": "running", "succeeded": "completed", "failed": "failed"}


# -- paths ----------------------------------------------------------------------------------------


def confined_path(value: Any, field: str, must_exist: bool = True, also: Sequence[Path] = ()) -> Path:
    """A client's path, resolved: relative paths are under the training folder, and anything that
    resolves outside it (``..``, a symlink, an absolute path elsewhere) and the folders ``also``
    names is a 403; a missing one (with ``must_exist``) a 404."""
    if not isinstance(value, str) or not value.strip():
        raise Refusal(JobErrorKind.INPUT, f"{field} is required: a path under the training folder")
    if len(value) > MAX_PATH_CHARS:
        raise Refusal(JobErrorKind.INPUT, f"{field} is over {MAX_PATH_CHARS} characters")
    root = training_dir()
    try:
        path = Path(value.strip()).expanduser()
    except RuntimeError:  # an unknown ~user
        raise Refusal(JobErrorKind.INPUT, f"{field} cannot be resolved: {shown(value)}") from None
    try:
        resolved = confine(path if path.is_absolute() else root / path, [root, *also], field)
    except UploadError as exc:
        if exc.cause != RefusalCause.FORBIDDEN:
            raise
        allowed = " and ".join(str(folder) for folder in also)
        raise Refusal(
            RefusalCause.FORBIDDEN,
            f"{field} {shown(value)} is outside the training folder ({root}, ACESTEP_TRAINING_DIR)"
            + (f" and {allowed}" if allowed else ""),
        ) from None
    if must_exist and not resolved.exists():
        raise Refusal(RefusalCause.NOT_FOUND, f"{field} {shown(value)} not found (looked for {resolved})")
    return resolved


# -- training runs --------------------------------------------------------------------------------


def latest_run(service, preprocess_only: bool) -> Job | None:
    """The newest training job of one kind queued here: a run, or a preprocessing task."""
    for job_id in reversed(service.training_ids):
        job = service.training_job(job_id)
        if job is not None and job.request.preprocess_only == preprocess_only:
            return job
    return None


def run_config(request: TrainingRequest) -> dict:
    """The run's settings as it uses them (the per-adapter defaults filled in)."""
    values = request.model_dump(exclude={"preprocess_only"})
    return values | {"learning_rate": request.lr, "train_epochs": request.epochs, "epochs": request.epochs}


def _status_text(job: Job, progress: TrainingProgress) -> str:
    """Upstream's ``status``: one line a person reads."""
    if job.state == JobState.QUEUED:
        return "Queued"
    if job.state == JobState.FAILED:
        return f"Failed: {job.error}"
    if job.state == JobState.SUCCEEDED:
        return "Stopped" if progress.stopped else "Completed"
    if progress.stage.startswith("preprocess"):
        return f"Preprocessing ({progress.stage.removeprefix('preprocess_')}) {progress.fraction:.0%}"
    if progress.stage == "train":
        loss = "" if progress.loss is None else f", Loss: {progress.loss:.4f}"
        return f"Epoch {progress.epoch}/{progress.epochs}, Step {progress.step}/{progress.total_steps}{loss}"
    return progress.stage.capitalize()


def status_payload(job: Job | None) -> dict:
    """Upstream's ``/v1/training/status`` of ``job`` (None: no run, ``status: "idle"``), with
    acestep's extras."""
    progress = (job.training if job is not None else None) or TrainingProgress()
    request = job.request if job is not None else None
    return {
        # upstream's keys
        "is_training": job is not None and not JobState(job.state).ended,
        "should_stop": bool(job is not None and job.cancel_requested),
        "status": "idle" if job is None else _status_text(job, progress),
        "current_epoch": progress.epoch,
        "current_step": progress.step,
        "total_steps": progress.total_steps,
        "current_loss": progress.loss,
        "loss_history": [{"step": int(step), "loss": loss} for step, loss in progress.losses],
        "steps_per_second": progress.steps_per_second or 0.0,
        "estimated_time_remaining": progress.eta_s or 0.0,
        "error": job.error if job is not None else None,
        "config": run_config(request) if request is not None else {},
        "tensor_dir": (job.dataset or request.dataset) if job is not None else "",
        "start_time": job.started if job is not None else None,
        # acestep's
        "task_id": job.id if job is not None else None,
        "state": str(job.state) if job is not None else "idle",
        "stage": job.stage if job is not None else "idle",
        "progress": job.progress if job is not None else 0.0,
        "epochs": progress.epochs,
        "learning_rate": progress.learning_rate,
        "elapsed_s": progress.elapsed_s,
        "samples": progress.samples,
        "checkpoints": progress.checkpoints,
        "adapter": progress.adapter,
        "adapter_type": request.adapter_type if request is not None else None,
        "output_name": request.output_name if request is not None else None,
        "stopped": progress.stopped,
        "preprocess": progress.preprocess,
    }


def preprocess_payload(job: Job) -> dict:
    """Upstream's ``/v1/dataset/preprocess_status`` of a preprocessing task, with the cache's
    counts: how many files each pass computed and how many it found already made."""
    progress = job.training or TrainingProgress()
    total = progress.samples
    ended = JobState(job.state).ended
    payload = {
        "task_id": job.id,
        "status": PREPROCESS_STATUS.get(str(job.state), str(job.state)),
        "state": str(job.state),
        "stage": job.stage,
        "progress": job.progress,
        "message": _status_text(job, progress),
        "current": total if ended else round(total * job.progress),
        "total": total,
        "output_dir": str(Path(job.dataset or job.request.dataset).parent),
        "computed": progress.preprocess.get("computed", {}),
        "reused": progress.preprocess.get("reused", {}),
        "error": job.error,
    }
    if job.state == JobState.SUCCEEDED:
        payload["result"] = {
            "message": payload["message"],
            "output_dir": payload["output_dir"],
            "num_tensors": total,
        }
    return payload


# -- datasets -------------------------------------------------------------------------------------


def sample_entry(dataset: Dataset, index: int) -> dict:
    """One sample as upstream's dataset routes list it (its dataset JSON entry), with its index."""
    return upstream_entry(dataset.samples[index], dataset.custom_tag, index) | {"index": index}


def dataset_payload(dataset: Dataset) -> dict:
    """The current dataset: upstream's keys, every sample, and the files left out with the reason."""
    return {
        "dataset_name": dataset.name,
        "folder": dataset.folder,
        "num_samples": len(dataset.samples),
        "labeled_count": dataset.labelled,
        "custom_tag": dataset.custom_tag,
        "tag_position": dataset.tag_position,
        "genre_ratio": dataset.genre_ratio,
        "samples": [sample_entry(dataset, i) for i in range(len(dataset.samples))],
        "problems": dataset.problems,
        "counts": {
            "samples": len(dataset.samples),
            "labelled": dataset.labelled,
            "problems": len(dataset.problems),
            "duration_s": round(dataset.total_duration, 2),
        },
    }


__all__ = [
    "confined_path",
    "dataset_payload",
    "latest_run",
    "preprocess_payload",
    "run_config",
    "sample_entry",
    "status_payload",
]
