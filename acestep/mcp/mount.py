"""Mounting the MCP tools on the REST app at ``/mcp`` (streamable HTTP), behind the API key (checked
by the app's guards)."""

from __future__ import annotations

from pathlib import Path

from acestep.mcp.tools import build_server


class AppBackend:
    """The REST app's queue and manager, read when a tool runs (they exist once the app started)."""

    def __init__(self, app):
        self.app = app

    @property
    def queue(self):
        return self.app.state.queue

    @property
    def manager(self):
        return self.app.state.manager

    @property
    def lm_name(self) -> str | None:
        return self.app.state.lm_name

    @property
    def lm_missing(self) -> str:
        return self.app.state.lm_missing

    @property
    def input_roots(self) -> list[Path]:
        return self.app.state.config.input_roots

    @property
    def uploads_dir(self) -> Path:
        return self.app.state.config.uploads_dir

    @property
    def max_upload_bytes(self) -> int:
        return self.app.state.config.max_upload_bytes

    @property
    def default_steps(self) -> int:
        return self.app.state.variant.default_steps


def mount_mcp(app, config):
    """Mount the tools at ``/mcp/``; returns the MCP server, whose session manager the app's
    lifespan must run. Without a key the SDK's DNS-rebinding protection is on, with the server's
    allowed hosts (the app's own guard checks the same rule first)."""
    from acestep.serving.origins import mcp_transport_security

    server = build_server(AppBackend(app), streamable_http_path="/", security=mcp_transport_security(config))
    # The key is checked in front of the whole app (serving.auth.HeaderKeyGate), /mcp included.
    app.mount("/mcp", server.streamable_http_app())
    return server
