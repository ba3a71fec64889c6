"""Mounting the MCP tools on the REST app at ``/mcp`` (streamable HTTP), behind the API key (checked
by the app's guards)."""

from __future__ import annotations

from pathlib import Path

from mcp.server.transport_security import TransportSecuritySettings

from acestep.mcp.tools import build_server


class AppBackend:
    """The REST app's service and manager, read when a tool runs (they exist once the app started)."""

    def __init__(self, app):
        self.app = app

    @property
    def service(self):
        return self.app.state.service

    @property
    def manager(self):
        return self.app.state.manager

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


def mount_mcp(app, security: TransportSecuritySettings):
    """Mount the tools at ``/mcp/``; returns the MCP server, whose session manager the app's
    lifespan must run. ``security`` is the SDK's DNS-rebinding protection as the app configures it
    (on without a key, with the server's allowed hosts: serving/origins.py checks the same rule
    first); the app passes it in, since a face does not import another."""
    training = app.state.config.enable_training
    server = build_server(AppBackend(app), streamable_http_path="/", security=security, training=training)
    # The key is checked in front of the whole app (serving.auth.HeaderKeyGate), /mcp included.
    app.mount("/mcp", server.streamable_http_app())
    return server
