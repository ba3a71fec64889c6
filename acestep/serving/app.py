"""The FastAPI app: one memory manager, one GPU worker, one job queue behind every route.

``create_app(config)`` builds it; the lifespan starts the worker process and the queue and stops
them again. With ``ACESTEP_QUEUE_URL`` set the server is a stateless front of a cluster instead:
the queue is Redis, the GPUs are ``acestep-worker`` processes, and ``app.state.manager`` sends
memory commands to them. Errors are 4xx/5xx with a ``detail`` that says what was wrong, never a
traceback.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from loguru import logger

from acestep import __version__
from acestep.checkpoints.layout import resolve
from acestep.checkpoints.lm_folders import lm_availability
from acestep.checkpoints.slots import ModelSlots
from acestep.cluster.settings import ClusterSettings, redacted
from acestep.errors import JobErrorKind, validation_message
from acestep.jobs.failures import Refusal, RefusalCause, status_of
from acestep.jobs.gpu_tokens import install_gpu_tokens
from acestep.jobs.queue import LocalJobQueue, QueueUnavailable
from acestep.jobs.service import JobService
from acestep.jobs.waits import CallerGone
from acestep.lora.selection import LoraSelection
from acestep.memory.manager import MemoryManager
from acestep.serving import docs_pages, openapi
from acestep.serving.auth import HeaderKeyGate
from acestep.serving.config import MIN_KEY_LENGTH, ServerConfig
from acestep.serving.errors import ErrorBoundary
from acestep.serving.limits import BodyGuard
from acestep.serving.origins import LocalOriginGuard, cors_options
from acestep.serving.throttle import AuthThrottle
from acestep.settings import value as setting_value
from acestep.worker.runner import EngineSpec
from acestep.worker.supervisor import Supervisor


def create_app(
    config: ServerConfig, supervisor: Supervisor | None = None, include_api: bool = True
) -> FastAPI:
    """``supervisor`` defaults to one over a ``MemoryManager`` built from ``config.env``; its worker
    is started here unless it already runs one.
    ``include_api=False`` keeps only /health (the UI alone, without ``--enable-api``)."""
    paths = resolve(config.checkpoint, config.dit)  # a wrong checkpoint fails at start, not per job
    slots = ModelSlots.build(  # a wrong slot 2 or 3 fails at start too
        paths,
        setting_value(config.env, "ACESTEP_CONFIG_PATH2"),
        setting_value(config.env, "ACESTEP_CONFIG_PATH3"),
    )
    cluster = ClusterSettings.from_env(config.env) if supervisor is None else None  # a bad URL fails at start
    # The adapters requests may name; a cluster's workers serve several models and check their own.
    loras = LoraSelection(None if cluster else paths.variant.tag)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        config.uploads_dir.mkdir(parents=True, exist_ok=True)
        token_client = None
        if cluster is not None:
            mm, queue = _cluster_front(cluster, config, paths, loras)
            mm.lm_name = app.state.lm_name
        else:
            mm, queue, token_client = _local_front(supervisor, config, paths, loras, app.state.lm_name, slots)
        app.state.manager, app.state.queue = mm, queue
        # The one front door every face (REST, UI, MCP) queues through.
        app.state.service = JobService(queue, mm, loras, app.state.lm_name, app.state.lm_missing)
        where = f"the cluster at {redacted(cluster.url)}" if cluster else paths.dit_name
        logger.info(f"acestep-api serving {where} on http://{config.host}:{config.port}")
        try:
            if mcp_server is not None:
                async with mcp_server.session_manager.run():
                    yield
            else:
                yield
        finally:
            queue.close()
            mm.close()
            if token_client is not None:
                token_client.close()

    # The docs pages are served without the key (they hold no secret); every API route needs it.
    # Their scripts and styles come from this server, not a CDN (serving/docs_pages.py).
    app = FastAPI(
        title="acestep",
        version=__version__,
        lifespan=lifespan,
        description=openapi.DESCRIPTION,
        openapi_tags=openapi.TAGS,
        docs_url=None,
        redoc_url=None,
    )
    docs_pages.install(app)
    openapi.install(app, keyed=bool(config.api_key))
    app.state.config = config
    if config.api_key and len(config.api_key) < MIN_KEY_LENGTH:
        logger.warning(
            f"the API key has {len(config.api_key)} characters; use at least {MIN_KEY_LENGTH} "
            "(python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    _guard(app, config)
    mcp_server = _mount_mcp(app, config) if include_api else None
    app.state.model_name = paths.dit_name
    app.state.slots = slots  # the models requests may name (acestep/checkpoints/slots.py)
    app.state.lm_name, app.state.lm_missing = lm_availability(paths.root)
    app.state.variant = paths.variant
    app.state.loras = loras

    _answer_refusals(app)
    _include_routes(app, include_api)
    return app


def _local_front(supervisor: Supervisor | None, config: ServerConfig, paths, loras, lm_name, slots=None):
    """The single-server queue: a supervisor (started here unless it runs a worker already), the
    job queue over its dispatcher, and the optional GPU token guard."""
    mm = supervisor or Supervisor(MemoryManager(env=config.env))
    mm.lm_name = lm_name
    if mm.dispatcher is None:
        mm.manager.fit_dit(paths.dit_name, paths.variant.is_xl)  # an XL DiT may need more offload
        mm.start(EngineSpec(config.checkpoint, dit=paths.dit_name), in_process=config.in_process_worker)
    queue = LocalJobQueue(
        mm,
        config.results_dir,
        config.queue_maxsize,
        config.result_ttl_s,
        config.cleanup_interval_s,
        model_name=paths.dit_name,
        loras=loras,
        checkpoint=paths,
        uploads_dir=config.uploads_dir,
        slots=slots,
    )
    if config.preload:
        mm.dispatcher.request_load()  # runs on the worker; the server answers meanwhile
    return mm, queue, install_gpu_tokens(mm.dispatcher)


def _answer_refusals(app: FastAPI) -> None:
    """Refusals raised anywhere below a route, answered with the failure table's status."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(exc)}, status_code=status_of(JobErrorKind.INPUT))

    @app.exception_handler(Refusal)
    async def _refused(request: Request, exc: Refusal) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(CallerGone)
    async def _gone(request: Request, exc: CallerGone) -> JSONResponse:
        detail = "client disconnected; the job was cancelled"
        return JSONResponse({"detail": detail}, status_code=status_of(RefusalCause.CALLER_GONE))

    @app.exception_handler(QueueUnavailable)
    async def _queue_down(request: Request, exc: QueueUnavailable) -> JSONResponse:
        status = status_of(RefusalCause.UNAVAILABLE)
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


def _include_routes(app: FastAPI, include_api: bool) -> None:
    """Every API route (only /health without ``include_api``), and the paths the key guards."""

    from acestep.serving import (
        routes_admin,
        routes_chat,
        routes_compat,
        routes_events,
        routes_lego,
        routes_lm,
        routes_lora,
        routes_models,
    )

    modules = (routes_compat, routes_events, routes_lm, routes_admin, routes_models, routes_lego, routes_lora)
    modules += (routes_chat,)
    if app.state.config.enable_training:  # off by default, as upstream's training routes are
        from acestep.serving import routes_dataset, routes_training

        modules += (routes_training, routes_dataset)
    routers = [r.router for r in modules]
    if include_api:
        for router in routers:
            app.include_router(router)
    else:
        routers = []
        app.add_api_route("/health", routes_compat.health, methods=["GET"])
    # The API's own paths, which the key guards (the UI mounted later has its own login; /health
    # and the docs pages are open).
    open_paths = openapi.OPEN_PATHS | openapi.docs_paths(app) | docs_pages.PATHS
    app.state.api_paths = frozenset(
        route.path
        for router in (app.router, *routers)
        for route in router.routes
        if getattr(route, "path", "/health") not in open_paths
    )


def _guard(app: FastAPI, config: ServerConfig) -> None:
    """The ASGI guards every request passes before a route (or the UI, or MCP) sees it, outermost
    first: each refuses with a 4xx/5xx that says why, before reading the body."""

    def is_api_path(scope) -> bool:  # routes of this app, not the UI mounted on it later
        path = scope["path"]
        return path in app.state.api_paths or HeaderKeyGate.header_only(scope)

    guards: list[tuple[type, dict]] = [
        (ErrorBoundary, {}),
        (LocalOriginGuard, {"config": config}) if not config.api_key else None,
        (CORSMiddleware, cors_options(config)),  # pages on localhost, and ACESTEP_CORS_ORIGINS
        (AuthThrottle, {"limit": config.auth_failures_per_minute, "key": config.api_key}),
        (HeaderKeyGate, {"key": config.api_key, "is_api_path": is_api_path}) if config.api_key else None,
        (BodyGuard, {"config": config}),
    ]
    for guard, options in reversed([g for g in guards if g is not None]):  # the last added runs first
        app.add_middleware(guard, **options)


def _cluster_front(cluster: ClusterSettings, config: ServerConfig, paths, loras: LoraSelection):
    """The Redis queue and the worker controls of a stateless API server."""
    from acestep.cluster.control import ClusterControl, RedisDefault
    from acestep.cluster.queue import RedisJobQueue

    queue = RedisJobQueue(
        cluster,
        config.results_dir,
        default_model=paths.dit_name,
        default_tasks=paths.variant.supported_tasks,
        default_variant=paths.variant.tag,
        maxsize=config.queue_maxsize,
        result_ttl_s=config.result_ttl_s,
        cleanup_interval_s=config.cleanup_interval_s,
        uploads_dir=config.uploads_dir,
    )
    loras.store = RedisDefault(queue)  # one default for every API server of the cluster
    queue.loras = loras
    return ClusterControl(queue), queue


def _mount_mcp(app: FastAPI, config: ServerConfig):
    """The MCP tools at /mcp/ when the ``mcp`` package is installed (the ``mcp`` extra)."""
    if not config.enable_mcp:
        return None
    try:
        from acestep.mcp.mount import mount_mcp
        from acestep.serving.origins import mcp_transport_security
    except ImportError:
        logger.info("MCP tools not mounted: install acestep[mcp]")
        return None
    return mount_mcp(app, mcp_transport_security(config))
