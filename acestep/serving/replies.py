"""Answers sent by the server's ASGI guards before any route runs: JSON ``{"detail": ...}``."""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import Send


async def send_refusal(
    send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = (), close: bool = True
) -> None:
    """A complete JSON error response. By default it closes the connection: a refused request's body
    is never read, and a client that was refused has no claim on a kept-alive socket."""
    body = json.dumps({"detail": detail}).encode()
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *([(b"connection", b"close")] if close else []),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
