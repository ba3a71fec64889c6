"""Waiting for a memory or LoRA command in every face (REST, MCP and the UI): ``run_command``.

Loads, unloads and LoRA changes run after the current job, which may take minutes. The blocking
call runs on a small pool of its own, never on anyio's shared thread pool: every route's blocking
work (/health included) needs that one, and abandoned waits parked there once hung them all. A
wait is bounded by ``ACESTEP_CONTROL_TIMEOUT`` seconds, and a caller that goes away (its task is
cancelled) stops waiting at once; either way a command that has not started is withdrawn, through
the dispatcher's ``WaitScope``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.worker.dispatcher import WAIT_SCOPE, CommandTimeout, WaitScope

T = TypeVar("T")
# A wait ends with its caller (its thread is freed when the scope's ``gone`` completes), so a few
# threads serve any number of callers; a cluster's broadcast, which reads no scope, may hold one
# until its own deadline.
THREADS = 4
GONE_POLL_S = 0.25  # how often a REST caller is checked for having left
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()

__all__ = ["CallerGone", "CommandTimeout", "run_command", "wait_limit"]


@functools.cache
def wait_limit() -> int:
    """``ACESTEP_CONTROL_TIMEOUT``: the longest a command waits for the running job, in seconds."""
    return setting_value(current_settings(), "ACESTEP_CONTROL_TIMEOUT")


class CallerGone(Exception):
    """The caller left before its job or command ended; the job was cancelled, the command
    withdrawn if it had not begun."""


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="acestep-command")
        return _pool


def _within(scope: WaitScope, function: Callable[..., T], args: tuple) -> T:
    token = WAIT_SCOPE.set(scope)
    try:
        return function(*args)
    finally:
        WAIT_SCOPE.reset(token)


async def run_command(function: Callable[..., T], *args: Any, gone: Callable[[], Any] | None = None) -> T:
    """``function(*args)`` (a manager's or LoRA selection's load or unload), waited for without
    holding the shared pool. ``CommandTimeout`` past the limit; cancelling the caller withdraws it,
    and so does ``await gone()`` turning true (a REST client that left: FastAPI does not cancel its
    handler), then with ``CallerGone``."""
    if gone is None:
        return await _command(function, args)
    task = asyncio.ensure_future(_command(function, args))
    try:
        while not (await asyncio.wait({task}, timeout=GONE_POLL_S))[0]:
            if await gone():
                raise CallerGone("the caller left; the command was withdrawn if it had not begun")
        return task.result()
    finally:
        if not task.done():
            task.cancel()  # its own cleanup withdraws the command
            await asyncio.gather(task, return_exceptions=True)


async def _command(function: Callable[..., T], args: tuple) -> T:
    limit = wait_limit()
    scope = WaitScope(deadline=time.monotonic() + limit, gone=Future())
    task = _executor().submit(_within, scope, function, args)
    try:
        # A backstop: the dispatcher ends its own wait at the deadline, but a call queued behind
        # busy threads, or one that reads no scope (a cluster's broadcast), might not.
        with anyio.move_on_after(limit + 1):
            return await asyncio.wrap_future(task)
        raise CommandTimeout(f"gave up after {limit} s: the worker is still busy; retry later")
    finally:
        task.cancel()  # queued here and not begun: it never begins
        scope.gone.set_result(None)  # a thread still waiting stops, withdrawing its command
