"""What a request body may cost before a route sees it: size, time and concurrent uploads.

Checked from the headers first, so an oversized body is refused without reading a byte of it, and
then while it arrives (chunked bodies have no length). A body that stalls is dropped after
``ACESTEP_BODY_IDLE_TIMEOUT`` seconds without data, and any body after ``ACESTEP_BODY_TIMEOUT``;
whatever the route had spooled is released with it. When a guard refuses a body after the route
started reading, the route's own answer (often a 400 from a parser that saw the body end) is
replaced by the guard's.
"""

from __future__ import annotations

import time

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from acestep.errors import JobErrorKind
from acestep.jobs.failures import RefusalCause, status_of
from acestep.serving.auth import PREAUTH_SCOPE_KEY
from acestep.serving.config import ServerConfig
from acestep.serving.replies import send_refusal

MAX_TEXT_BODY = 4 * 2**20  # every body that is not a multipart upload (JSON, forms, MCP's JSON-RPC)
PREAUTH_BODY = 2**20  # a body whose key is still inside it (upstream's ai_token)
FORM_OVERHEAD = 4 * 2**20  # a multipart body's fields besides its two audio files
UPLOAD_RETRY_AFTER_S = 5
# The routes that take audio files: the REST API's generation and lego routes, and the UI's upload.
UPLOAD_PATHS = frozenset({"/release_task", "/lego", "/gradio_api/upload"})
# JSON routes whose body carries audio as base64 (two files), counted as an upload.
JSON_UPLOAD_PATHS = frozenset({"/v1/chat/completions"})


class _Slot:
    """One upload's place among ``ACESTEP_MAX_UPLOADS``, given back once (body received or request
    ended, whichever comes first)."""

    def __init__(self, semaphore: anyio.Semaphore):
        self.semaphore, self.held = semaphore, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.semaphore.release()


class BodyRefused(Exception):
    """Raised into the route reading a body the guard refused; the guard answers instead."""


def body_cap(config: ServerConfig, multipart: bool, preauth: bool) -> int:
    if preauth:
        return PREAUTH_BODY
    return 2 * config.max_upload_bytes + FORM_OVERHEAD if multipart else MAX_TEXT_BODY


def json_upload_cap(config: ServerConfig) -> int:
    """A JSON body with two base64 audio files (4 characters per 3 bytes) and its other fields."""
    return 2 * 4 * -(-config.max_upload_bytes // 3) + FORM_OVERHEAD


def text_body_cap(config: ServerConfig, path: str) -> int:
    """The largest non-multipart body ``path`` reads (serving/body.py checks it again)."""
    return json_upload_cap(config) if path in JSON_UPLOAD_PATHS else MAX_TEXT_BODY


class BodyGuard:
    def __init__(self, app: ASGIApp, config: ServerConfig):
        self.app, self.config = app, config
        self.upload_slots = anyio.Semaphore(config.max_uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        media_type = (Headers(scope=scope).get("content-type") or "").split(";", 1)[0].strip().lower()
        # Only the routes that take audio files may receive an upload's size; anywhere else a
        # multipart body (which frameworks parse before any login check) is held to 4 MiB.
        multipart = media_type == "multipart/form-data" and scope["path"] in UPLOAD_PATHS
        preauth = bool(scope.get(PREAUTH_SCOPE_KEY))
        cap = body_cap(self.config, multipart, preauth)
        if scope["path"] in JSON_UPLOAD_PATHS and not preauth:  # audio inside JSON: an upload too
            multipart, cap = True, json_upload_cap(self.config)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_refusal(send, status_of(JobErrorKind.INPUT), "invalid Content-Length")
                return
            if int(declared) > cap:
                await send_refusal(send, *self._too_large(cap, preauth))
                return
        if not multipart or preauth:  # a body held to 1 MiB or 4 MiB takes no upload place
            await self._guarded(scope, receive, send, cap, preauth, None)
            return
        # An upload waits for a slot before a byte of it is read (its data waits in the socket);
        # the slot is given back as soon as its body has arrived.
        slot = None
        with anyio.move_on_after(self.config.body_timeout_s):
            await self.upload_slots.acquire()
            slot = _Slot(self.upload_slots)
        if slot is None:
            busy = f"{self.config.max_uploads} uploads are arriving; retry later (ACESTEP_MAX_UPLOADS)"
            await send_refusal(
                send,
                status_of(RefusalCause.UPLOADS_BUSY),
                busy,
                [(b"retry-after", str(UPLOAD_RETRY_AFTER_S).encode())],
            )
            return
        try:
            await self._guarded(scope, receive, send, cap, preauth, slot)
        finally:
            slot.release()

    async def _guarded(
        self, scope: Scope, receive: Receive, send: Send, cap: int, preauth: bool, slot: _Slot | None
    ) -> None:
        refusal: tuple[int, str] | None = None
        seen, started = 0, time.monotonic()
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal refusal, seen, body_done
            if body_done:  # after the body, receive only reports a disconnect: no deadline then
                return await receive()
            left = self.config.body_timeout_s - (time.monotonic() - started)
            with anyio.move_on_after(max(0.0, min(self.config.body_idle_timeout_s, left))) as waited:
                message = await receive()
            if waited.cancelled_caught:
                refusal = (status_of(RefusalCause.STALLED), self._stalled(left))
                raise BodyRefused
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if body_done and slot is not None:
                    slot.release()
                if seen > cap:
                    refusal = self._too_large(cap, preauth)
                    raise BodyRefused
            return message

        answered = False

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if refusal is not None:  # the route answered a body the guard refused: answer for it
                if not answered:
                    answered = True
                    await send_refusal(send, *refusal)
                return
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except BodyRefused:
            pass
        if refusal is not None and not answered:
            answered = True
            await send_refusal(send, *refusal)

    def _stalled(self, left: float) -> str:
        if left <= self.config.body_idle_timeout_s:
            return f"request body not received within {self.config.body_timeout_s} s (ACESTEP_BODY_TIMEOUT)"
        return (
            f"request body stalled: no data for {self.config.body_idle_timeout_s} s "
            "(ACESTEP_BODY_IDLE_TIMEOUT)"
        )

    def _too_large(self, cap: int, preauth: bool) -> tuple[int, str]:
        if preauth:
            return status_of(RefusalCause.UNAUTHORIZED), (
                f"Missing Authorization header: a body over {cap // 2**20} MiB needs the API key in the "
                "header, not in the body's ai_token"
            )
        hint = " (raise ACESTEP_MAX_UPLOAD_MB for larger uploads)" if cap > MAX_TEXT_BODY else ""
        return status_of(RefusalCause.TOO_LARGE), f"request body over {cap // 2**20} MiB{hint}"
