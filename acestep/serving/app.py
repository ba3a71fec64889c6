"""The FastAPI app: one memory manager, one GPU worker, one job queue behind every route.

``create_app(config)`` builds it; the lifespan starts the worker process and the queue and stops
them again. Errors are 4xx/5xx with a ``detail`` that says what was wrong, never a traceback.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from loguru import logger

from acestep import __version__
from acestep.checkpoints.layout import resolve
from acestep.checkpoints.lm_folders import lm_availability
from acestep.memory.manager import MemoryManager
from acestep.serving.config import ServerConfig
from acestep.serving.gpu_tokens import GpuTokenClient, GpuTokenSettings
from acestep.serving.jobs import LocalJobQueue
from acestep.serving.limits import BodyLimitMiddleware
from acestep.worker.runner import EngineSpec


def create_app(
    config: ServerConfig, manager: MemoryManager | None = None, include_api: bool = True
) -> FastAPI:
    """``manager`` defaults to one built from the environment; its worker is started here.
    ``include_api=False`` keeps only /health (the UI alone, without ``--enable-api``)."""
    paths = resolve(config.checkpoint, config.dit)  # a wrong checkpoint fails at start, not per job

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        mm = manager or MemoryManager()
        mm.lm_name = app.state.lm_name
        if mm.dispatcher is None:
            mm.start(EngineSpec(config.checkpoint, dit=paths.dit_name), in_process=config.in_process_worker)
        config.uploads_dir.mkdir(parents=True, exist_ok=True)
        queue = LocalJobQueue(
            mm, config.results_dir, config.queue_maxsize, config.result_ttl_s, config.cleanup_interval_s
        )
        app.state.manager, app.state.queue = mm, queue
        if config.preload:
            mm.dispatcher.request_load()  # runs on the worker; the server answers meanwhile
        tokens = GpuTokenSettings.from_env()
        token_client = GpuTokenClient(tokens) if tokens else None
        if token_client is not None:
            mm.dispatcher.job_guard = lambda job: token_client.hold(
                job.id, {"task_type": job.request.task_type}
            )
            logger.info(f"GPU token queue: {tokens.url} ({tokens.tokens} tokens a job)")
        logger.info(f"acestep-api serving {paths.dit_name} on http://{config.host}:{config.port}")
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

    # With a key, the API docs are behind it too (every route but /health needs the key).
    docs = {} if not config.api_key else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="acestep", version=__version__, lifespan=lifespan, **docs)
    app.state.config = config
    # Two uploads at the limit plus form fields; anything larger is refused before it is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=2 * config.max_upload_bytes + 4 * 2**20)
    if config.api_key:
        _protected_docs(app)
    mcp_server = _mount_mcp(app, config) if include_api else None
    app.state.model_name = paths.dit_name
    app.state.lm_name, app.state.lm_missing = lm_availability(paths.root)
    app.state.variant = paths.variant
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        messages = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(messages)}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, HTTPException):  # pragma: no cover - FastAPI routes these itself
            raise exc
        logger.exception(f"{request.method} {request.url.path} failed")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    from acestep.serving import routes_admin, routes_compat, routes_lego, routes_lm

    if include_api:
        app.include_router(routes_compat.router)
        app.include_router(routes_lm.router)
        app.include_router(routes_admin.router)
        app.include_router(routes_lego.router)
    else:
        app.add_api_route("/health", routes_compat.health, methods=["GET"])
    return app


def _protected_docs(app: FastAPI) -> None:
    """/openapi.json, /docs and /redoc behind the API key (send it as a Bearer header)."""
    from fastapi import Depends
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    from acestep.serving import auth

    guard = [Depends(auth.require_key)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    async def openapi() -> dict:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="acestep API")

    @app.get("/redoc", include_in_schema=False, dependencies=guard)
    async def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title="acestep API")


def _mount_mcp(app: FastAPI, config: ServerConfig):
    """The MCP tools at /mcp/ when the ``mcp`` package is installed (the ``mcp`` extra)."""
    if not config.enable_mcp:
        return None
    try:
        from acestep.mcp.mount import mount_mcp
    except ImportError:
        logger.info("MCP tools not mounted: install acestep[mcp]")
        return None
    return mount_mcp(app, config.api_key)
