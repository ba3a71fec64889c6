"""LoRA routes: GET /v1/loras, POST /v1/lora/load and /v1/lora/unload, and upstream's
/v1/lora/status, /v1/lora/scale and /v1/lora/toggle.

``load`` puts an adapter into the served DiT (on the GPU worker, between jobs) and makes it the
default for requests that name no adapter, as upstream's sticky LoRA did; each queued job records
the adapters it runs with. Adapters are named by their entry in ``ACESTEP_LORA_DIR``; paths
elsewhere are refused.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from acestep.errors import JobError, JobErrorKind, shown
from acestep.fields import word_bool
from acestep.jobs.failures import Refusal, RefusalCause, command_refusal
from acestep.jobs.waits import CommandTimeout, run_command
from acestep.lora.catalog import LoraError
from acestep.lora.selection import resident
from acestep.request import ADAPTER_NAME_RE, MAX_LORA_SCALE
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.routes_compat import body_schema
from acestep.serving.wire import envelope
from acestep.tasks import MAX_PATH_CHARS

router = APIRouter(tags=["lora"], dependencies=[Depends(auth.require_key)])
NAME_FIELDS = ("name", "lora", "adapter_name", "lora_name")
LOAD_BODY = body_schema(
    {
        "name": {"type": "string", "description": "adapter name in ACESTEP_LORA_DIR"},
        "lora_path": {"type": "string", "description": "upstream: a path inside ACESTEP_LORA_DIR"},
        "scale": {
            "type": "number",
            "minimum": 0,
            "maximum": MAX_LORA_SCALE,
            "description": "how strongly it acts (default 1)",
        },
    }
)


def _name(request: Request, fields: dict, required: bool) -> str | None:
    """The adapter a body names: by name, or by upstream's ``lora_path`` inside the LoRA folder."""
    for key in NAME_FIELDS:
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            name = value.strip()
            if not ADAPTER_NAME_RE.match(name):
                raise Refusal(
                    JobErrorKind.INPUT, f"{key} must be an adapter name from GET /v1/loras, got {shown(name)}"
                )
            return name
    path = fields.get("lora_path")
    if isinstance(path, str) and path.strip():
        if "\0" in path or len(path) > MAX_PATH_CHARS:  # no file has such a path; resolve() would raise
            raise Refusal(
                JobErrorKind.INPUT, f"lora_path: no NUL byte and at most {MAX_PATH_CHARS} characters"
            )
        folder = request.app.state.loras.folder.resolve()
        try:
            target = Path(path.strip()).expanduser()
            target = (target if target.is_absolute() else folder / target).resolve()
        except (OSError, RuntimeError):  # e.g. an unknown ~user, a symlink loop
            raise Refusal(JobErrorKind.INPUT, f"lora_path cannot be resolved: {shown(path)}") from None
        if target.parent != folder:
            raise Refusal(
                RefusalCause.FORBIDDEN,
                f"lora_path must be an adapter directly inside the LoRA folder ({folder}); got {shown(path)}",
            )
        return target.stem if target.suffix == ".safetensors" else target.name
    if required:
        raise Refusal(JobErrorKind.INPUT, "name the adapter: name (see GET /v1/loras) or lora_path")
    return None


def _scale(fields: dict, default: float | None = 1.0) -> float | None:
    value = fields.get("scale", fields.get("lora_scale"))
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise Refusal(JobErrorKind.INPUT, f"scale must be a number, got {value!r}") from None
    if not 0.0 <= scale <= MAX_LORA_SCALE:
        raise Refusal(JobErrorKind.INPUT, f"scale must be between 0 and {MAX_LORA_SCALE:g}, got {value!r}")
    return scale


async def _run(request: Request, function, *args):
    """A LoRA command (it may wait for the running job): its refusal is a 4xx with the reason, a
    worker that fails otherwise, or a job still running past the wait limit, a 503."""
    try:
        return await run_command(function, *args, gone=request.is_disconnected)
    except (LoraError, ValueError, JobError, CommandTimeout) as exc:
        raise command_refusal(exc) from None


@router.get("/v1/loras")
async def list_loras(request: Request) -> dict:
    """Every adapter in the LoRA folder (name, base variant, rank, ...), the unusable files with
    the reason, the default and what the worker holds."""
    state = request.app.state
    catalog = await run_in_threadpool(state.loras.catalog)
    status = await run_in_threadpool(state.manager.get_status)
    return envelope(catalog | {"resident": resident(status)})


@router.post("/v1/lora/load", openapi_extra=LOAD_BODY)
async def load_lora(request: Request) -> dict:
    """Load an adapter and make it the default (at ``scale``) for requests that name none."""
    fields, _ = await read_body(request)
    name, scale = _name(request, fields, required=True), _scale(fields)
    state = request.app.state
    return envelope(await _run(request, state.loras.load, state.manager, name, scale))


@router.post(
    "/v1/lora/unload", openapi_extra=body_schema({"name": {"type": "string", "description": "default: all"}})
)
async def unload_lora(request: Request) -> dict:
    """Remove an adapter (all without a name) from the DiT and from the default; the DiT's weights
    are then exactly those loaded from disk."""
    fields, _ = await read_body(request)
    name = _name(request, fields, required=False)
    state = request.app.state
    return envelope(await _run(request, state.loras.unload, state.manager, [name] if name else None))


@router.get("/v1/lora/status")
async def lora_status(request: Request) -> dict:
    """Upstream's status: whether a default adapter is set and used, its names and scales."""
    state = request.app.state
    default = await run_in_threadpool(state.loras.default)
    status = await run_in_threadpool(state.manager.get_status)
    adapters = default["adapters"]
    return envelope(
        {
            "loaded": bool(adapters),
            "active": bool(adapters) and default["enabled"],
            "adapters": [entry["name"] for entry in adapters],
            "scales": {entry["name"]: entry["scale"] for entry in adapters},
            "resident": resident(status),
        }
    )


@router.post(
    "/v1/lora/scale",
    openapi_extra=body_schema(
        {"scale": {"type": "number", "description": "the default adapters' scale"}}, ["scale"]
    ),
)
async def lora_scale(request: Request) -> dict:
    """Upstream's scale: the default adapter's (or one named adapter's) scale for later requests."""
    fields, _ = await read_body(request)
    name, scale = _name(request, fields, required=False), _scale(fields, default=None)
    if scale is None:
        raise Refusal(JobErrorKind.INPUT, "scale is required")
    loras = request.app.state.loras
    if not (await run_in_threadpool(loras.default))["adapters"]:
        raise Refusal(
            RefusalCause.CONFLICT,
            "no default adapter: POST /v1/lora/load first, or send lora_scale per request",
        )
    try:
        return envelope(await run_in_threadpool(loras.set_scale, scale, name))
    except KeyError:
        raise Refusal(
            RefusalCause.NOT_FOUND, f"{name!r} is not a default adapter (see GET /v1/lora/status)"
        ) from None


@router.post(
    "/v1/lora/toggle",
    openapi_extra=body_schema(
        {"use_lora": {"type": "boolean", "description": "false: jobs run without the default adapters"}},
        ["use_lora"],
    ),
)
async def lora_toggle(request: Request) -> dict:
    """Upstream's toggle: keep the default adapters, but use them (or not) for later requests."""
    fields, _ = await read_body(request)
    value = fields.get("use_lora", fields.get("enabled"))
    enabled = word_bool(str(value))
    if enabled is None:
        raise Refusal(JobErrorKind.INPUT, f"use_lora must be true or false, got {value!r}")
    return envelope(await run_in_threadpool(request.app.state.loras.set_enabled, enabled))
