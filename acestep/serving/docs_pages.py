"""Swagger UI (/docs) and ReDoc (/redoc) served whole from this server, so they work offline.

FastAPI's own pages load their scripts from cdn.jsdelivr.net; these load the copies that the
fastapi-offline package ships, from /docs/static. ReDoc's side menu also asks cdn.redoc.ly for a
logo, so both pages carry a Content-Security-Policy that keeps every request on this server. Like
/openapi.json they hold no secret: serving/app.py leaves ``PATHS`` out of the paths the key guards.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL, REDOC_URL, ASSETS_URL = "/docs", "/redoc", "/docs/static"
PATHS = frozenset({DOCS_URL, REDOC_URL, ASSETS_URL})
# swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png, as the package ships them.
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
# Scripts, styles, images and ReDoc's worker from the page's own server (inline, data: and blob:
# too), nothing from anywhere else.
SAME_SERVER_ONLY = "default-src 'self' 'unsafe-inline' data: blob:"


def install(app: FastAPI) -> None:
    """Add both pages and their files to ``app``, made with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        return _same_server_only(page)

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        return _same_server_only(page)


def _same_server_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = SAME_SERVER_ONLY
    return page
