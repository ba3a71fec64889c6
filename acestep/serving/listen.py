"""Serving one ASGI app on one or more ports from one process (one worker, one job queue)."""

from __future__ import annotations

import socket


def serve(app, host: str, ports: list[int]) -> None:
    """One server, one app, one worker, listening on every port in ``ports``."""
    import uvicorn

    if len(ports) == 1:
        uvicorn.run(app, host=host, port=ports[0], log_level="info")
        return
    sockets = [_listening_socket(host, port) for port in ports]
    uvicorn.Server(uvicorn.Config(app, host=host, log_level="info")).run(sockets=sockets)


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
