"""API key checks: a Bearer header (or the bare key) or upstream's ``ai_token`` body field.

When a key is configured every route but ``/health`` requires it; keys are compared in constant
time (upstream used plain equality and skipped several routes).
"""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.datastructures import Headers

from acestep.jobs.failures import Refusal, RefusalCause, status_of


def keys_match(given: str, key: str) -> bool:
    """Constant-time comparison of a presented key with the configured one."""
    try:
        return hmac.compare_digest(given.encode(), key.encode())
    except UnicodeEncodeError:  # e.g. a lone surrogate: cannot be the key
        return False


def token_from_header(value: str | None) -> str | None:
    """The key in an Authorization header: ``Bearer <key>`` or the bare key."""
    value = (value or "").strip()
    if not value:
        return None
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else value


def header_token(request: Request) -> str | None:
    return token_from_header(request.headers.get("authorization"))


def check(request: Request, ai_token: str | None = None) -> None:
    """Raise 401 unless the request carries the configured key (no key configured: open)."""
    key = request.app.state.config.api_key
    if not key:
        return
    if ai_token is not None:
        if not keys_match(str(ai_token), key):
            raise Refusal(RefusalCause.UNAUTHORIZED, "Invalid ai_token")
        return
    token = header_token(request)
    if token is None:
        raise Refusal(RefusalCause.UNAUTHORIZED, "Missing ai_token or Authorization header")
    if not keys_match(token, key):
        raise Refusal(RefusalCause.UNAUTHORIZED, "Invalid API key")


def require_key(request: Request) -> None:
    """Dependency for routes without a body key."""
    check(request)


PREAUTH_SCOPE_KEY = "acestep.preauth"  # set on requests whose key, if any, is still in the body
HEADER_ONLY_PATHS = frozenset({"/mcp", "/v1/chat/completions"})  # no body key: refused without a header


class HeaderKeyGate:
    """Check the Authorization header before anything reads the body.

    A wrong header key is a 401 at once. A request to an API route without a header may still carry
    upstream's ``ai_token`` in its body, so it goes on, marked: ``BodyGuard`` then reads at most a
    small body for it, and the route checks the token. MCP (``/mcp``) and chat completions have no
    body token: there a missing header is a 401 too. Paths that are not API routes (the UI, which
    has its own login) pass untouched.
    """

    def __init__(self, app, key: str, is_api_path):
        self.app, self.key, self.is_api_path = app, key, is_api_path

    @staticmethod
    def header_only(scope) -> bool:
        # Chat completions carry audio as base64 in a large JSON body and have no body token either.
        return scope["path"] in HEADER_ONLY_PATHS or scope["path"].startswith("/mcp/")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.is_api_path(scope):
            from acestep.serving.replies import send_refusal

            token = token_from_header(Headers(scope=scope).get("authorization"))
            if token is None and self.header_only(scope):
                await send_refusal(send, status_of(RefusalCause.UNAUTHORIZED), "Missing Authorization header")
                return
            if token is None:
                scope[PREAUTH_SCOPE_KEY] = True
            elif not keys_match(token, self.key):
                await send_refusal(send, status_of(RefusalCause.UNAUTHORIZED), "Invalid API key")
                return
        await self.app(scope, receive, send)
