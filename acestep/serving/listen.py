"""Serving one ASGI app on one or more ports from one process (one worker, one job queue).

uvicorn bounds open connections (``limit_concurrency``: a 503 past it) but has no deadline for a
request's headers: a client that opens a socket and sends nothing, or a header a byte at a time,
holds it forever. ``HeaderDeadline`` closes a connection whose request headers are not complete
within ``ACESTEP_HEADER_TIMEOUT`` seconds of it opening or of the previous response, and one
answered before its body arrived. Bodies have their own deadlines (``acestep.serving.limits``).

On SIGTERM uvicorn waits for every open connection to end before the app's shutdown runs; a stream
that never ends on its own (a Gradio page's heartbeat) would hold the process until it is killed.
``serve``'s ``on_stop`` callbacks run first, when the shutdown begins, to end such streams.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from acestep.serving.config import ServerConfig


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's headers."""

    header_timeout_s: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a whole request line and headers arrived
            self._disarm()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:
            # Answered before its body was read (a refusal, a 404): uvicorn would go on reading
            # the rest, and each byte would put off its keep-alive timer. Nobody will read it.
            self.server_state.total_requests += 1
            self.transport.close()
            return
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.close()


def serve(
    app, config: ServerConfig, ports: list[int] | None = None, on_stop: Sequence[Callable[[], None]] = ()
) -> None:
    """One server, one app, one worker, listening on every port in ``ports`` (default: the
    config's port), with the config's connection bounds; ``on_stop`` runs as the shutdown begins,
    before uvicorn waits for open connections."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            for callback in on_stop:
                callback()
            await super().shutdown(sockets)

    ports = ports or [config.port]
    protocol = type(
        "ConfiguredHeaderDeadline", (HeaderDeadline,), {"header_timeout_s": config.header_timeout_s}
    )
    options = dict(
        host=config.host, log_level="info", http=protocol, limit_concurrency=config.max_connections
    )
    if len(ports) == 1:
        StoppingServer(uvicorn.Config(app, port=ports[0], **options)).run()
        return
    sockets = [_listening_socket(config.host, port) for port in ports]
    StoppingServer(uvicorn.Config(app, **options)).run(sockets=sockets)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"error: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock
