"""Model slots over REST: GET /v1/models and /v1/model_inventory (one payload), POST /v1/init,
POST /v1/reinitialize and POST /v1/load. Loads run on the GPU worker between jobs; the handlers
wait for them through ``acestep.jobs.waits`` and never touch a GPU (docs/api.md "Model slots").
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from acestep.checkpoints.layout import CheckpointError
from acestep.checkpoints.slots import SLOTS, SlotNotDeclared, UnknownModel, model_name
from acestep.errors import JobErrorKind, shown
from acestep.fields import BY_NAME
from acestep.jobs.failures import Refusal, RefusalCause, command_refusal
from acestep.jobs.waits import CommandTimeout, run_command
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.inventory import inventory
from acestep.serving.routes_compat import body_schema
from acestep.serving.wire import envelope

router = APIRouter(tags=["models"], dependencies=[Depends(auth.require_key)])

INIT_SCHEMA = body_schema(
    {
        "model": {"type": "string", "description": "the DiT folder to serve in the slot"},
        "slot": {
            "type": "integer",
            "minimum": 1,
            "maximum": 3,
            "default": 1,
            "description": "1: the default model; 2 and 3: ACESTEP_CONFIG_PATH2/3",
        },
        "init_llm": {"type": "boolean", "default": False, "description": "also load the 5 Hz LM"},
        "lm_model_path": {"type": "string", "description": BY_NAME["lm_model_path"].description},
    }
)
LOAD_SCHEMA = body_schema(
    {
        "config_path": {"type": "string", "description": "upstream's name for model"},
        "model": {"type": "string", "description": "the DiT to load (default: the served one)"},
    }
)


async def load_model(request: Request, model: str | None) -> dict:
    """Load (or wake) ``model`` on the worker after the running job: the measured report with
    ``model``, the name loaded. A name this server does not serve is refused first."""
    try:
        if model and not request.app.state.queue.routes_by_model:  # a cluster's control checks its own
            request.app.state.slots.require(model)
        return await run_command(request.app.state.manager.load, None, model, gone=request.is_disconnected)
    except (UnknownModel, CommandTimeout) as exc:
        raise command_refusal(exc) from None


def _named(fields: dict, request: Request, *names: str) -> str | None:
    """The first of ``names`` sent in the body or the query, as a model name."""
    for name in names:
        value = fields.get(name) or request.query_params.get(name)
        if value not in (None, ""):
            return model_name(str(value))
    return None


@router.get("/v1/models")
@router.get("/v1/model_inventory")
async def models(request: Request) -> dict:
    """Every model this server serves (``is_loaded``: served here; ``residency``: where it is now),
    the LM folders, and the GPUs."""
    return envelope(await run_in_threadpool(inventory, request.app.state))


@router.post("/v1/load", openapi_extra=LOAD_SCHEMA)
async def load(request: Request) -> dict:
    """``config_path`` or ``model`` (body or query; default the model in use): load it after the
    running job; ``data.model`` names the model loaded, beside the measured report. On one server
    the named model also becomes the default (slot 1), so that the next job that names none runs
    on it, as after upstream's ``/v1/init`` of slot 1."""
    fields, _ = await read_body(request)
    state = request.app.state
    model = _named(fields, request, "config_path", "model", "model_name")
    report = await load_model(request, model)
    if model and not state.queue.routes_by_model:
        _take(state, await run_in_threadpool(state.slots.assign, 1, model))
    return envelope(report | {"model": model or report.get("model") or state.slots.default})


@router.post("/v1/init", openapi_extra=INIT_SCHEMA)
async def init(request: Request) -> dict:
    """Upstream's model initialisation: put ``model`` in ``slot`` (1 by default; slot 1's model is
    the default one) and load it. ``init_llm`` checks the LM this server uses (it loads on a job's
    first need). An undeclared slot or an unknown model is a 400 (upstream: 200 with ``code``)."""
    fields, _ = await read_body(request)
    state = request.app.state
    slot = _slot(fields.get("slot", request.query_params.get("slot")))
    if not state.slots.declared(slot):
        raise Refusal(JobErrorKind.INPUT, str(SlotNotDeclared(slot)))
    target = _named(fields, request, "model", "config_path") or state.slots.names[slot - 1]
    try:
        slots = await run_in_threadpool(state.slots.assign, slot, target)
    except UnknownModel as exc:
        raise command_refusal(exc) from None
    except CheckpointError as exc:  # a folder that is there but incomplete
        raise Refusal(JobErrorKind.INPUT, f"Model initialization failed: {exc}") from None
    init_llm = str(fields.get("init_llm", request.query_params.get("init_llm", "false"))).lower()
    lm_path = _named(fields, request, "lm_model_path")
    if init_llm in ("true", "1", "yes"):
        _check_lm(state, lm_path)
    report = await load_model(request, target)
    _take(state, slots)
    data = await run_in_threadpool(inventory, state)
    return envelope(
        {
            "message": "Model initialization completed",
            "slot": slot,
            "loaded_model": target,
            "loaded_lm_model": state.lm_name,
            "models": data["models"],
            "lm_models": data["lm_models"],
            "llm_initialized": data["llm_initialized"],
            "report": report,
        }
    )


@router.post("/v1/reinitialize")
async def reinitialize(request: Request) -> dict:
    """Load again what an unload left out (the model in use; the LM follows on its first need)."""
    report = await load_model(request, None)
    reloaded = ["DiT/VAE/Text Encoder"] if report.get("action") not in ("none", None) else []
    message = "✅ Service reinitialized" + (f"\n🔄 Reloaded: {', '.join(reloaded)}" if reloaded else "")
    return envelope({"message": message, "reloaded": reloaded, "report": report})


def _slot(value) -> int:
    if value in (None, ""):
        return 1
    try:
        slot = int(value)
    except (TypeError, ValueError):
        slot = 0
    if slot not in SLOTS or str(value).strip() not in {str(s) for s in SLOTS}:
        raise Refusal(JobErrorKind.INPUT, f"slot must be 1, 2 or 3, got {shown(value)}")
    return slot


def _check_lm(state, lm_path: str | None) -> None:
    """``init_llm``: the LM must be here; another LM than the configured one cannot be swapped in."""
    if state.lm_name is None:
        raise Refusal(RefusalCause.LM_MISSING, f"LLM init failed: {state.lm_missing}")
    if lm_path and lm_path != state.lm_name:
        raise Refusal(
            JobErrorKind.INPUT,
            f"LLM init failed: this server uses {state.lm_name}; set ACESTEP_LM_MODEL_PATH={lm_path} "
            "and restart to use another LM",
        )


def _take(state, slots) -> None:
    """The new slots in force: requests, the queue and the inventory read them from now on."""
    state.slots = slots
    state.model_name = slots.default
    state.variant = slots.primary.variant  # slot 1's: the default steps of requests that name none
    queue = state.queue
    if getattr(queue, "slots", None) is not None:
        queue.slots = slots
        queue.model_name = slots.default
