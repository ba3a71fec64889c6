"""The last word on a request that failed unexpectedly: one log record, a 500, the socket kept.

FastAPI's ``Exception`` handlers run in Starlette's outermost middleware, which re-raises after
answering: uvicorn then logs the error a second time and drops the keep-alive connection. This
boundary sits inside it and ends the exception itself. A client that went away mid-request is not
an error at all: nothing is logged above debug and nothing is sent.
"""

from __future__ import annotations

from loguru import logger
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from acestep.errors import JobErrorKind
from acestep.jobs.failures import status_of
from acestep.serving.replies import send_refusal


class ErrorBoundary:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = gone = False

        async def watched_receive() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except Exception as exc:
            if gone or isinstance(exc, ClientDisconnect):
                logger.debug(f"{scope['method']} {scope['path']}: the client went away")
                return
            logger.opt(exception=exc).error(f"{scope['method']} {scope['path']} failed")
            if not started:
                await send_refusal(
                    send,
                    status_of(JobErrorKind.INTERNAL),
                    f"internal error: {type(exc).__name__}",
                    close=False,
                )
