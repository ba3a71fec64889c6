"""Dataset routes, upstream ACE-Step 1.5's: POST /v1/dataset/scan, GET /v1/dataset/samples,
GET|PUT /v1/dataset/sample/{idx}, POST /v1/dataset/save, POST /v1/dataset/preprocess[_async] and
GET /v1/dataset/preprocess_status[/{task_id}].

As upstream, the server keeps one current dataset (``app.state.training_dataset``, behind a lock):
scan a folder into it, edit its samples, save it as a dataset JSON file. Preprocessing saves it as
``<output_dir>/dataset.json`` and queues a preprocessing-only training job (the VAE latents and
text conditions go into the training folder's cache, reused while nothing changes); a later
``/v1/training/start`` with ``tensor_dir: <output_dir>`` trains on it. Every path is under the
training folder (403 elsewhere). Present only with ``ACESTEP_TRAINING=on``, behind the API key.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from acestep.errors import JobErrorKind, shown, validation_message
from acestep.jobs.failures import Refusal, RefusalCause
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.routes_compat import body_schema
from acestep.serving.training_wire import (
    confined_path,
    dataset_payload,
    latest_run,
    preprocess_payload,
    sample_entry,
)
from acestep.serving.wire import envelope
from acestep.training.dataset import Dataset, DatasetError, checked_name, edit, require_usable, save, scan
from acestep.training.places import DATASET_FILE
from acestep.training.request import TrainingRequest
from acestep.training.sample import CHECKS, EDITABLE, INSTRUMENTAL, MAX_GENRE_RATIO, TAG_POSITIONS

router = APIRouter(tags=["dataset"], dependencies=[Depends(auth.require_key)])
_CREATE = threading.Lock()

# The fields each body takes (any other is a 400).
SCAN_FIELDS = ("audio_dir", "dataset_name", "custom_tag", "tag_position", "all_instrumental")
SAVE_FIELDS = ("save_path", "dataset_name", "custom_tag", "tag_position", "all_instrumental", "genre_ratio")
# An edit's upstream extras: the index again, "labeled" (here: has a caption) and prompt_override.
SAMPLE_EXTRAS = ("sample_idx", "labeled", "prompt_override")
PREPROCESS_FIELDS = ("output_dir", "skip_existing", "model")
# What each body field means (/openapi.json); the checks are the handlers' and acestep/training's.
FIELD_DOCS = {
    "audio_dir": "a folder of audio (with sidecar captions and lyrics) in the training folder",
    "dataset_name": "the dataset's name",
    "custom_tag": "a tag added to every caption (e.g. a LoRA trigger word)",
    "tag_position": f"where custom_tag goes: {', '.join(TAG_POSITIONS)}",
    "all_instrumental": "every track is instrumental (their lyrics become [Instrumental])",
    "genre_ratio": f"percent of samples trained on their genre instead of the caption, 0-{MAX_GENRE_RATIO}",
    "save_path": "the dataset JSON file to write, in the training folder",
    "output_dir": "the folder of the preprocessed tensors, in the training folder",
    "skip_existing": "keep tensors already there",
    "model": "the DiT whose encoders preprocess it (default: the served one)",
    "caption": "what the music sounds like",
    "lyrics": f"the lyrics ({INSTRUMENTAL} for none)",
    "bpm": "beats per minute",
    "keyscale": "the key, e.g. 'C major'",
    "timesignature": "beats per bar, e.g. '4'",
    "language": "the vocal language, e.g. 'en'",
    "is_instrumental": "no vocals",
    "genre": "the genre (trained on instead of the caption for genre_ratio percent of steps)",
    "sample_idx": "upstream's copy of the index in the path (ignored)",
    "labeled": "upstream's flag: here a sample is labeled when it has a caption",
    "prompt_override": "upstream's per-sample prompt choice",
}


def _documented(names) -> dict:
    return {name: {"description": FIELD_DOCS[name]} for name in names}


@dataclass
class CurrentDataset:
    """The server's one dataset being built; every read and change holds ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    dataset: Dataset | None = None


def _current(request: Request) -> CurrentDataset:
    state = request.app.state
    with _CREATE:
        holder = getattr(state, "training_dataset", None)
        if holder is None:
            holder = state.training_dataset = CurrentDataset()
    return holder


def _loaded(holder: CurrentDataset) -> Dataset:
    if holder.dataset is None:
        raise Refusal(JobErrorKind.INPUT, "no dataset loaded: POST /v1/dataset/scan first")
    return holder.dataset


async def _fields(request: Request, allowed: tuple[str, ...]) -> dict:
    fields, _ = await read_body(request)
    fields.pop("ai_token", None)  # the key travels in the header here (checked before the body)
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise Refusal(
            JobErrorKind.INPUT, f"unknown fields: {', '.join(unknown)} (known: {', '.join(allowed)})"
        )
    return fields


def _checked(what: str, function, *args, **kwargs):
    """A dataset call whose ``DatasetError`` is a 400 with its reason."""
    try:
        return function(*args, **kwargs)
    except DatasetError as exc:
        raise Refusal(JobErrorKind.INPUT, f"{what}: {exc}") from None


def _settings(fields: dict) -> dict[str, Any]:
    """The dataset-wide settings a scan or save body sends, checked (400 with the reason)."""

    def value(check, *args):
        try:
            return check(*args)
        except DatasetError as exc:
            raise Refusal(JobErrorKind.INPUT, str(exc)) from None

    settings: dict[str, Any] = {}
    if fields.get("dataset_name") is not None:
        settings["name"] = value(checked_name, fields["dataset_name"])
    if fields.get("custom_tag") is not None:
        settings["custom_tag"] = value(CHECKS["caption"], "custom_tag", fields["custom_tag"])
    position = fields.get("tag_position")
    if position is not None:
        if position not in TAG_POSITIONS:
            choices = ", ".join(TAG_POSITIONS)
            raise Refusal(JobErrorKind.INPUT, f"tag_position must be one of {choices}, got {shown(position)}")
        settings["tag_position"] = position
    ratio = fields.get("genre_ratio")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, int) or not 0 <= ratio <= MAX_GENRE_RATIO:
            raise Refusal(
                JobErrorKind.INPUT,
                f"genre_ratio must be a whole number from 0 to {MAX_GENRE_RATIO}, got {shown(ratio)}",
            )
        settings["genre_ratio"] = ratio
    if fields.get("all_instrumental") is not None:
        settings["all_instrumental"] = value(
            CHECKS["is_instrumental"], "all_instrumental", fields["all_instrumental"]
        )
    return settings


def _apply(dataset: Dataset, settings: dict[str, Any]) -> None:
    """Checked settings into ``dataset``; ``all_instrumental: true`` makes every track instrumental
    (false leaves each as its files say, where upstream cleared nothing either)."""
    for key, value in settings.items():
        if key != "all_instrumental":
            setattr(dataset, key, value)
    if settings.get("all_instrumental"):
        for sample in dataset.samples:
            edit(dataset, sample.name, is_instrumental=True)


@router.post("/v1/dataset/scan", openapi_extra=body_schema(_documented(SCAN_FIELDS), ["audio_dir"]))
async def scan_folder(request: Request) -> dict:
    """Scan a folder under the training folder (audio with sidecars) into the current dataset."""
    fields = await _fields(request, SCAN_FIELDS)
    folder = confined_path(fields.get("audio_dir"), "audio_dir")
    settings = _settings(fields)
    if not folder.is_dir():
        raise Refusal(JobErrorKind.INPUT, f"audio_dir {shown(fields['audio_dir'])} is not a folder")

    def work() -> dict:
        dataset = _checked("audio_dir", scan, folder, settings.pop("name", None))
        _checked("audio_dir", require_usable, dataset)
        _apply(dataset, settings)
        holder = _current(request)
        with holder.lock:
            holder.dataset = dataset
            payload = dataset_payload(dataset)
        return payload | {"message": f"Found {len(dataset.samples)} audio files in {folder}"}

    return envelope(await run_in_threadpool(work))


def _locked(request: Request, read):
    """``read(dataset)`` on the current dataset under its lock (in a thread: a save may hold it)."""
    holder = _current(request)
    with holder.lock:
        return read(_loaded(holder))


@router.get("/v1/dataset/samples")
async def samples(request: Request) -> dict:
    """Every sample of the current dataset (400 when none is loaded)."""
    return envelope(await run_in_threadpool(_locked, request, dataset_payload))


def _index(dataset: Dataset, idx: int) -> int:
    if not 0 <= idx < len(dataset.samples):
        raise Refusal(
            RefusalCause.NOT_FOUND, f"sample index {idx} out of range: the dataset has {len(dataset.samples)}"
        )
    return idx


@router.get("/v1/dataset/sample/{idx}")
async def sample(request: Request, idx: int) -> dict:
    return envelope(await run_in_threadpool(_locked, request, lambda d: sample_entry(d, _index(d, idx))))


def _changes(fields: dict, idx: int) -> tuple[dict, list[str]]:
    """The sample fields an edit body sets, and notes on what it sent in vain. As upstream, an
    instrumental track's lyrics are ``[Instrumental]`` whatever the body's ``lyrics`` say."""
    sent_idx = fields.pop("sample_idx", idx)
    if sent_idx != idx:
        raise Refusal(JobErrorKind.INPUT, f"sample_idx {shown(sent_idx)} differs from the path's index {idx}")
    warnings = []
    fields.pop("labeled", None)  # here a sample is labelled when it has a caption
    if fields.pop("prompt_override", None) is not None:
        warnings.append("prompt_override: not supported here; the caption is used")
    if fields.get("is_instrumental") is True and fields.get("lyrics", INSTRUMENTAL) not in ("", INSTRUMENTAL):
        fields.pop("lyrics")
        warnings.append("lyrics: ignored, the sample is instrumental")
    return fields, warnings


@router.put(
    "/v1/dataset/sample/{idx}",
    openapi_extra=body_schema(_documented((*EDITABLE, *SAMPLE_EXTRAS))),
)
async def update_sample(request: Request, idx: int) -> dict:
    """Change one sample's fields (each checked; a bad value is a 400 and changes nothing)."""
    changes, warnings = _changes(await _fields(request, (*EDITABLE, *SAMPLE_EXTRAS)), idx)

    def change(dataset: Dataset) -> dict:
        _checked(f"sample {idx}", edit, dataset, dataset.samples[_index(dataset, idx)].name, **changes)
        return sample_entry(dataset, idx)

    entry = await run_in_threadpool(_locked, request, change)
    return envelope({"message": f"Sample {idx} updated", "sample": entry, "warnings": warnings})


def _dataset_file(value: Any, field: str) -> Path:
    """A dataset file to write: a ``.json`` path as given, any other path a folder holding
    ``dataset.json``."""
    path = confined_path(value, field, must_exist=False)
    return path if path.suffix.lower() == ".json" and not path.is_dir() else path / DATASET_FILE


def _save_current(holder: CurrentDataset, target: Path, settings: dict | None = None) -> Dataset:
    with holder.lock:
        dataset = _loaded(holder)
        _apply(dataset, settings or {})
        _checked("save", save, dataset, target)
        return dataset


@router.post("/v1/dataset/save", openapi_extra=body_schema(_documented(SAVE_FIELDS), ["save_path"]))
async def save_dataset(request: Request) -> dict:
    """Write the current dataset as upstream's dataset JSON (a folder path: its ``dataset.json``)."""
    fields = await _fields(request, SAVE_FIELDS)
    target = _dataset_file(fields.get("save_path"), "save_path")
    settings = _settings(fields)
    dataset = await run_in_threadpool(_save_current, _current(request), target, settings)
    return envelope(
        {
            "message": f"Saved {len(dataset.samples)} samples to {target}",
            "save_path": str(target),
            "dataset_name": dataset.name,
            "num_samples": len(dataset.samples),
        }
    )


async def _queue_preprocess(request: Request):
    """Save the current dataset into ``output_dir`` and queue its preprocessing."""
    fields = await _fields(request, PREPROCESS_FIELDS)
    folder = confined_path(fields.get("output_dir"), "output_dir", must_exist=False)
    if folder.exists() and not folder.is_dir():
        raise Refusal(JobErrorKind.INPUT, f"output_dir {shown(fields['output_dir'])} is not a folder")
    target = folder / DATASET_FILE
    await run_in_threadpool(_save_current, _current(request), target)  # its folder made as needed
    try:  # skip_existing: the cache always reuses what is unchanged
        run = TrainingRequest(dataset=str(target), model=fields.get("model"), preprocess_only=True)
    except ValidationError as exc:
        raise Refusal(JobErrorKind.INPUT, validation_message(exc)) from None
    job, _ = await request.app.state.service.submit_training(run, confined=True)
    return job


@router.post(
    "/v1/dataset/preprocess", openapi_extra=body_schema(_documented(PREPROCESS_FIELDS), ["output_dir"])
)
async def preprocess(request: Request) -> dict:
    """Preprocess the current dataset and wait for it (a client that leaves cancels it)."""
    service = request.app.state.service
    job = await _queue_preprocess(request)
    job = await service.await_job(job, None, gone=request.is_disconnected)
    return envelope(preprocess_payload(job) | {"message": "Preprocessing completed"})


@router.post(
    "/v1/dataset/preprocess_async",
    openapi_extra=body_schema(_documented(PREPROCESS_FIELDS), ["output_dir"]),
)
async def preprocess_async(request: Request) -> dict:
    """Queue the preprocessing of the current dataset; follow it with ``preprocess_status``."""
    job = await _queue_preprocess(request)
    total = await run_in_threadpool(_locked, request, lambda dataset: len(dataset.samples))
    return envelope({"task_id": job.id, "message": "Preprocessing task queued", "total": total})


@router.get("/v1/dataset/preprocess_status")
async def preprocess_status_latest(request: Request) -> dict:
    """The latest preprocessing task (``status: "idle"`` without one)."""
    job = latest_run(request.app.state.service, preprocess_only=True)
    if job is None:
        return envelope({"task_id": None, "status": "idle", "progress": 0.0, "current": 0, "total": 0})
    return envelope(preprocess_payload(job))


@router.get("/v1/dataset/preprocess_status/{task_id}")
async def preprocess_status(request: Request, task_id: str) -> dict:
    job = request.app.state.service.training_job(task_id)
    if job is None or not job.request.preprocess_only:
        raise Refusal(RefusalCause.NOT_FOUND, f"no preprocessing task {shown(task_id)} on this server")
    return envelope(preprocess_payload(job))
