"""Slowing down key guessing: too many failed keys or UI logins from one address get a 429.

A failure is a 401 from any route, or a refused UI login (Gradio answers ``POST /login`` with 400).
After ``limit`` failures within a minute the address is refused before its requests run, until
the oldest failure is a minute old, except requests that carry the right key in their header: a
guesser sharing an address (a proxy's) with real clients does not lock them out. uvicorn takes the
address from ``X-Forwarded-For`` only when the proxy connects from 127.0.0.1.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from acestep.jobs.failures import RefusalCause, status_of
from acestep.serving.auth import keys_match, token_from_header
from acestep.serving.replies import send_refusal

WINDOW_S = 60.0
MAX_TRACKED = 10_000  # addresses remembered at once; the least recent are forgotten first


class AuthThrottle:
    def __init__(
        self, app: ASGIApp, limit: int, key: str | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.app, self.limit, self.key, self.clock = app, limit, key, clock
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._has_the_key(scope):  # a throttled address keeps its key
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("?", 0))[0]
        wait = self.retry_after(address)
        if wait:
            detail = f"too many failed keys or logins from {address}; retry in {wait} s"
            headers = [(b"retry-after", str(wait).encode())]
            await send_refusal(send, status_of(RefusalCause.THROTTLED), detail, headers)
            return
        login = scope["method"] == "POST" and scope["path"].rstrip("/") == "/login"

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == status_of(RefusalCause.UNAUTHORIZED) or (login and status == 400):
                    self.record(address)
            await send(message)

        await self.app(scope, receive, watched_send)

    def _has_the_key(self, scope: Scope) -> bool:
        token = token_from_header(Headers(scope=scope).get("authorization"))
        return bool(self.key and token and keys_match(token, self.key))

    def _recent(self, address: str) -> deque[float] | None:
        times = self.failures.get(address)
        if times is None:
            return None
        horizon = self.clock() - WINDOW_S
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self.failures[address]
            return None
        return times

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may try again; 0 when it may now."""
        times = self._recent(address)
        if times is None or len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[0] + WINDOW_S - self.clock()))

    def record(self, address: str) -> None:
        times = self._recent(address) or deque(maxlen=self.limit)
        times.append(self.clock())
        self.failures[address] = times
        self.failures.move_to_end(address)
        while len(self.failures) > MAX_TRACKED:
            self.failures.popitem(last=False)
