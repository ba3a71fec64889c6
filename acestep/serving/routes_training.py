"""Training routes, upstream ACE-Step 1.5's: POST /v1/training/start (LoRA), /start_lokr (LoKr),
GET /v1/training/status, POST /v1/training/stop and /export.

Present only with ``ACESTEP_TRAINING=on`` (serving/app.py), behind the API key like every route.
A run is queued through the ``JobService`` like any job (one run at a time, 409 while one is queued
or running); it reads a dataset under the training folder (``ACESTEP_TRAINING_DIR``: a path
elsewhere is a 403), and its adapter lands in the LoRA folder, where generation uses it by name.
Bodies are JSON; a field this server does not know is a 400, except the upstream ones it accepts
and ignores (named in the answer's ``warnings``).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from acestep.errors import JobErrorKind, shown, validation_message
from acestep.fields import word_bool
from acestep.jobs.failures import Refusal, RefusalCause
from acestep.lora.catalog import PEFT_SUFFIX
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.routes_compat import body_schema
from acestep.serving.training_wire import confined_path, latest_run, run_config, status_payload
from acestep.serving.wire import envelope
from acestep.training.field_help import field_help
from acestep.training.request import TrainingRequest, training_request
from acestep.worker.job import Job

router = APIRouter(tags=["training"], dependencies=[Depends(auth.require_key)])

# Upstream's LoKr tensor-shard options tune its own loader: accepted so upstream clients work, and
# named in ``warnings`` (as ``use_fp8`` is: FP8 training is not built here).
IGNORED_FIELDS = ("sample_cache_size", "auto_shard", "shard_size")
# Upstream keys of a run's output folder (TrainingRequest reads its last part as the name).
OUTPUT_FIELDS = {"lora": "lora_output_dir", "lokr": "output_dir"}
# The fields of the other adapter type, refused on each route (they would change nothing).
OWN_PREFIX = {"lora": "lora_", "lokr": "lokr_"}
LABELS = {"lora": "LoRA", "lokr": "LoKr"}


def _start_schema(adapter_type: str) -> dict:
    """The body's OpenAPI schema: TrainingRequest's fields of this adapter type."""
    schema = TrainingRequest.model_json_schema(by_alias=True)
    other = OWN_PREFIX["lokr" if adapter_type == "lora" else "lora"]
    properties = {
        name: {"description": field_help(name) or name.replace("_", " ")} | spec  # the field's own first
        for name, spec in schema["properties"].items()
        if not name.startswith(other) and name not in ("adapter_type", "preprocess_only")
    }
    properties[OUTPUT_FIELDS[adapter_type]] = {
        "type": "string",
        "description": "its last part names the adapter",
    }
    properties |= {name: {"description": "accepted, no effect here"} for name in ("use_fp8", *IGNORED_FIELDS)}
    return body_schema(properties, ["tensor_dir"])


def _run_request(fields: dict, adapter_type: str) -> tuple[TrainingRequest, list[str]]:
    """The ``TrainingRequest`` a start body asks for, and the notes on what it sent in vain."""
    fields = dict(fields)
    fields.pop("ai_token", None)  # the key travels in the header here (checked before the body)
    sent = fields.pop("adapter_type", adapter_type)
    if sent != adapter_type:
        route = "/v1/training/start" if sent == "lora" else "/v1/training/start_lokr"
        raise Refusal(
            JobErrorKind.INPUT, f"adapter_type {shown(sent)}: this route trains {adapter_type}; use {route}"
        )
    other = OWN_PREFIX["lokr" if adapter_type == "lora" else "lora"]
    wrong = sorted(k for k in fields if k.startswith(other) and k in TrainingRequest.model_fields)
    if wrong:
        raise Refusal(JobErrorKind.INPUT, f"{', '.join(wrong)}: not {adapter_type} settings")
    if fields.pop("network_weights", None):
        raise Refusal(
            JobErrorKind.INPUT,
            "network_weights is not supported: resume a run with its output_name and resume=true",
        )
    warnings = []
    if word_bool(str(fields.pop("use_fp8", False))):
        warnings.append(
            "use_fp8: FP8 training is not supported here; the run trains in the model's precision"
        )
    ignored = [name for name in IGNORED_FIELDS if fields.pop(name, None) is not None]
    if ignored:
        warnings.append(f"ignored (no effect here): {', '.join(ignored)}")
    if "tensor_dir" in fields and "dataset" in fields:
        raise Refusal(JobErrorKind.INPUT, "give tensor_dir or dataset (the same field), not both")
    path = fields.pop("tensor_dir", None) if "tensor_dir" in fields else fields.pop("dataset", None)
    fields["tensor_dir"] = str(confined_path(path, "tensor_dir"))
    try:
        return training_request(fields | {"adapter_type": adapter_type}), warnings
    except ValidationError as exc:
        raise Refusal(JobErrorKind.INPUT, validation_message(exc)) from None


async def _start(request: Request, adapter_type: str) -> dict:
    fields, _ = await read_body(request)
    run, warnings = _run_request(fields, adapter_type)
    service = request.app.state.service
    job, prepared = await service.submit_training(run, confined=True)
    run = prepared.request
    folder = request.app.state.loras.folder
    return envelope(
        {
            "message": f"{LABELS[adapter_type]} training queued",
            "task_id": job.id,
            "status": str(job.state),
            "adapter_type": adapter_type,
            "output_name": run.output_name,
            "tensor_dir": prepared.dataset,
            "output_dir": str(folder / run.output_name),  # where its adapter is written
            "samples": prepared.samples,
            "estimate_gib": prepared.estimate_gib,
            "config": run_config(run),
            "fp8_enabled": False,
            "warnings": warnings,
        }
    )


@router.post("/v1/training/start", openapi_extra=_start_schema("lora"))
async def start_lora(request: Request) -> dict:
    """Queue a LoRA run on a dataset under the training folder (``tensor_dir``)."""
    return await _start(request, "lora")


@router.post("/v1/training/start_lokr", openapi_extra=_start_schema("lokr"))
async def start_lokr(request: Request) -> dict:
    """Queue a LoKr run on a dataset under the training folder (``tensor_dir``)."""
    return await _start(request, "lokr")


def _job(request: Request, task_id: str | None) -> Job | None:
    """The run ``task_id`` names (404 when there is none), else the latest one."""
    service = request.app.state.service
    if not task_id:
        return latest_run(service, preprocess_only=False)
    job = service.training_job(task_id)
    if job is None:
        raise Refusal(RefusalCause.NOT_FOUND, f"no training run {shown(task_id)} on this server")
    return job


@router.get("/v1/training/status")
async def training_status(request: Request, task_id: str | None = None) -> dict:
    """Upstream's status of the latest run (or ``task_id``'s); ``status: "idle"`` without one."""
    return envelope(status_payload(await run_in_threadpool(_job, request, task_id)))


STOP_MESSAGES = {
    "stopping": "Stopping training... (after the update in progress; its last checkpoint is kept "
    "and its adapter exported)",
    "cancelled": "Training cancelled before it started",
    "finished": "No training in progress (the last run has ended)",
    "none": "No training in progress",
}


@router.post(
    "/v1/training/stop",
    openapi_extra=body_schema(
        {"task_id": {"type": "string", "description": "the run (default: the latest)"}}
    ),
)
async def stop_training(request: Request) -> dict:
    """Stop the running run (or ``task_id``): it ends after its update with its checkpoint."""
    fields, _ = await read_body(request)
    unknown = sorted(set(fields) - {"task_id", "ai_token"})
    if unknown:
        raise Refusal(JobErrorKind.INPUT, f"unknown fields: {', '.join(unknown)}")
    task_id = fields.get("task_id") or request.query_params.get("task_id")
    service = request.app.state.service
    if task_id and service.training_job(str(task_id)) is None:
        raise Refusal(RefusalCause.NOT_FOUND, f"no training run {shown(task_id)} on this server")
    outcome = await service.stop_training(str(task_id) if task_id else None)
    return envelope({"message": STOP_MESSAGES.get(outcome, outcome), "outcome": outcome})


EXPORT_BODY = body_schema(
    {
        "export_path": {
            "type": "string",
            "description": "optional: a copy's folder, under the LoRA or training folder",
        },
        "lora_output_dir": {
            "type": "string",
            "description": "the run's output folder (its last part names it)",
        },
        "output_name": {"type": "string", "description": "the adapter's name (default: the latest run's)"},
    }
)


def _adapter_name(request: Request, fields: dict) -> str:
    """The adapter an export names: ``output_name``, upstream's ``lora_output_dir``/``output_dir``
    (read as a start body reads it), else the latest run's."""
    named = {k: fields[k] for k in ("output_name", "lora_output_dir", "output_dir") if fields.get(k)}
    if named:
        try:
            return TrainingRequest.model_validate({"dataset": "-"} | named).output_name
        except ValidationError as exc:
            raise Refusal(JobErrorKind.INPUT, validation_message(exc)) from None
    job = latest_run(request.app.state.service, preprocess_only=False)
    if job is None or job.request.output_name is None:
        raise Refusal(
            RefusalCause.NOT_FOUND, "no training run on this server: name the adapter (output_name)"
        )
    return job.request.output_name


def _export(request: Request, fields: dict) -> dict:
    name = _adapter_name(request, fields)
    loras = request.app.state.loras
    found = [e for e in loras.catalog()["loras"] if e["name"] in (name, name + PEFT_SUFFIX)]
    if not found:
        raise Refusal(
            RefusalCause.NOT_FOUND, f"no adapter named {name!r} in the LoRA folder ({loras.folder})"
        )
    adapters = [{"name": e["name"], "format": e["format"], "path": e["path"]} for e in found]
    answer = {"adapter": name, "adapters": adapters, "lora_dir": str(loras.folder), "export_path": None}
    if not fields.get("export_path"):
        return answer | {
            "message": f"the adapter is in the LoRA folder: {', '.join(a['name'] for a in adapters)}"
        }
    target = _export_target(fields["export_path"], loras.folder)
    # Upstream exports its PEFT folder; a LoKr adapter has one folder.
    chosen = next((e for e in found if e["format"] == "peft"), found[0])
    source = Path(chosen["path"])
    source = source.parent if source.parent.name == chosen["name"] else source  # a folder adapter
    _copy(source, target, fields["export_path"])
    return answer | {
        "message": "LoRA exported successfully",
        "export_path": str(target),
        "source": str(source),
    }


def _export_target(value: str, lora_folder: Path) -> Path:
    """Where a copy may go: a new path under the training or LoRA folder (never over a file)."""
    target = confined_path(value, "export_path", must_exist=False, also=[lora_folder])
    if target.exists():
        raise Refusal(RefusalCause.CONFLICT, f"export_path {shown(value)} already exists; choose a new path")
    return target


def _copy(source: Path, target: Path, value: str) -> None:
    """Copy an adapter file or folder to a new ``target``; a copy that fails leaves nothing."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    except FileExistsError:  # made meanwhile by someone else: theirs, left alone
        raise Refusal(RefusalCause.CONFLICT, f"export_path {shown(value)} already exists") from None
    except OSError as exc:
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
        kind = JobErrorKind.DISK if exc.errno == errno.ENOSPC else JobErrorKind.INTERNAL
        raise Refusal(kind, f"the export failed: {exc.strerror or type(exc).__name__}") from None


@router.post("/v1/training/export", openapi_extra=EXPORT_BODY)
async def export_adapter(request: Request) -> dict:
    """Where a trained adapter is (its names and paths in the LoRA folder); with ``export_path``,
    a copy there."""
    fields, _ = await read_body(request)
    fields.pop("ai_token", None)
    unknown = sorted(set(fields) - {"export_path", "lora_output_dir", "output_dir", "output_name"})
    if unknown:
        raise Refusal(JobErrorKind.INPUT, f"unknown fields: {', '.join(unknown)}")
    return envelope(await run_in_threadpool(_export, request, fields))
