"""An MCP client session on a test server's streamable-HTTP endpoint (``/mcp/``), with its key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from _server import Server
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


@asynccontextmanager
async def http_session(server: Server) -> AsyncIterator[ClientSession]:
    """An initialised session through the MCP SDK's own client, as an agent would open one."""
    url = f"http://127.0.0.1:{server.port}/mcp/"
    async with (
        httpx.AsyncClient(headers=server.auth, timeout=600, trust_env=False) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session
