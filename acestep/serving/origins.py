"""Which web pages may talk to a server without a key: same origin, named hosts only.

A no-key server trusts whoever can reach it, which on loopback means the user; but any web page
the user opens can also send requests to 127.0.0.1, and a DNS-rebinding page can even read the
answers. So without a key a request must name an allowed host (``ServerConfig.host_names``: a
rebinding attacker's Host is their own domain) and, when a browser says where it comes from, come
from the same origin, a page on this machine (``LOCAL_ORIGIN_RE``: localhost, 127.0.0.1 or [::1] on
any port, as upstream's CORS rule) or one of ``ACESTEP_CORS_ORIGINS``. With a key the key is the
protection, and proxies may use any Host name. CORS itself admits the same origins
(``cors_options``; docs/security.md, patches/0048).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from acestep.jobs.failures import RefusalCause, status_of
from acestep.serving.config import ServerConfig
from acestep.serving.replies import send_refusal

# Web pages served from this machine, on any port: CORS admits them by default, and a server
# without a key answers them. Upstream's rule, with [::1] added; not "null" (patches/0048).
LOCAL_ORIGIN_RE = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"
CORS_METHODS = ("GET", "POST", "OPTIONS")
CORS_HEADERS = ("Content-Type", "Authorization")  # the key travels in Authorization (serving/auth.py)


def is_local_origin(origin: str) -> bool:
    return re.fullmatch(LOCAL_ORIGIN_RE, origin.strip().lower()) is not None


def cors_options(config: ServerConfig) -> dict:
    """``CORSMiddleware``'s options: pages on this machine, and ``ACESTEP_CORS_ORIGINS`` besides."""
    return {
        "allow_origins": list(config.cors_origins),
        "allow_origin_regex": LOCAL_ORIGIN_RE,
        "allow_methods": list(CORS_METHODS),
        "allow_headers": list(CORS_HEADERS),
    }


def host_name(value: str) -> str:
    """The name in a Host header, without port, brackets or a trailing dot, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return name.rstrip(".")


class LocalOriginGuard:
    """Refuse foreign Host names (421) and cross-site origins (403) on a server without a key."""

    def __init__(self, app: ASGIApp, config: ServerConfig):
        self.app = app
        self.names = set(config.host_names)
        self.origins = {origin.rstrip("/").lower() for origin in config.cors_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self.refusal(scope)
            if refusal is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await send_refusal(send, *refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        host = Headers(scope=scope).get("host") or ""
        if "*" not in self.names and host_name(host) not in self.names:
            return status_of(RefusalCause.MISDIRECTED), (
                f"Host {host!r} is not served here: without an API key only "
                f"{', '.join(sorted(self.names))} are answered (ACESTEP_ALLOWED_HOSTS adds names)"
            )
        origin = Headers(scope=scope).get("origin")
        if origin is None or origin.rstrip("/").lower() in self.origins or is_local_origin(origin):
            return None
        if origin == "null" or urlsplit(origin).netloc.lower() != host.strip().lower():
            return status_of(RefusalCause.FORBIDDEN), (
                f"cross-site request from {origin!r} refused: without an API key only the server's own "
                "pages and pages on localhost may call it (ACESTEP_CORS_ORIGINS allows other origins)"
            )
        return None


def mcp_transport_security(config: ServerConfig):
    """The MCP SDK's own DNS-rebinding protection, on the same rule (on only without a key)."""
    from mcp.server.transport_security import TransportSecuritySettings

    if config.api_key or "*" in config.host_names:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = [f"[{n}]" if ":" in n else n for n in config.host_names]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*hosts, *(f"{h}:*" for h in hosts)],
        allowed_origins=[
            *(f"{scheme}://{h}{port}" for scheme in ("http", "https") for h in hosts for port in ("", ":*")),
            *config.cors_origins,
        ],
    )
