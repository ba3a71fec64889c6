"""Raw sockets to a test server: requests that stop half-way, as a slow or hostile client sends them."""

from __future__ import annotations

import socket
import time


def connect(port: int, timeout: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def head(method: str, path: str, port: int, headers: dict[str, str | int]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int | None, bytes]:
    """The status and everything the server sent until it closed or went quiet; (None, b"") when
    it closed without answering."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            header, _, body = data.partition(b"\r\n\r\n")
            length = [
                int(v)
                for k, _, v in (h.partition(b":") for h in header.split(b"\r\n"))
                if k.lower() == b"content-length"
            ]
            if length and len(body) >= length[0]:
                break
    if not data:
        return None, b""
    return int(data.split(b" ", 2)[1]), data


def held_for(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reading and dropping whatever it sends), at most
    ``limit``."""
    sock.settimeout(0.5)
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            if not sock.recv(65536):
                break
        except TimeoutError:
            continue
        except OSError:
            break
    return time.monotonic() - started
