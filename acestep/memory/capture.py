"""The opt-in fast path's safety net: RNG states saved around graph capture, eager on failure.

Upstream captured CUDA graphs by default; a capture that failed left the default CUDA generator
marked as capturing, so the next random op anywhere in the process (the DiT's noise included)
raised, and a successful one could still shift the sampler's RNG (patches/0024). Here
capture is opt-in (``ACESTEP_LM_COMPILE=1``) and always runs inside :func:`guarded_capture`:
the CPU and every CUDA device's RNG state are saved first and restored afterwards, whatever
happened; a failure is logged once and the caller stays eager for the life of the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch
from loguru import logger

T = TypeVar("T")

_lock = threading.Lock()
_logged: set[str] = set()
_injected: list[str] = []  # test hook: the next capture fails with this message


def fail_next_capture(message: str = "injected capture failure") -> None:
    """Make the next :func:`guarded_capture` fail after disturbing the RNGs (for tests)."""
    with _lock:
        _injected.append(message)


def _saved_states() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    return torch.get_rng_state(), cuda


def _restore(states: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        try:
            torch.cuda.synchronize()
        except RuntimeError as exc:  # a failed capture can leave an error pending on the stream
            logger.warning(f"CUDA synchronise after a failed capture reported: {exc}")
        try:
            torch.cuda.set_rng_state_all(cuda)
        except RuntimeError as exc:  # never let the restore itself fail the load or the job
            logger.error(f"could not restore the CUDA RNG state after graph capture: {exc}")


def _disturb_and_fail(message: str) -> None:
    # What a broken capture does to the process: random draws happened, then an exception.
    torch.rand(16)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.rand(16, device="cuda")
    raise RuntimeError(message)


def guarded_capture(name: str, capture: Callable[[], T]) -> T | None:
    """Run ``capture``; return its result, or ``None`` after a failure. RNG states are always restored."""
    states = _saved_states()
    with _lock:
        injected = _injected.pop(0) if _injected else None
    try:
        if injected is not None:
            _disturb_and_fail(injected)
        return capture()
    except Exception as exc:  # any failure means eager, never a failed load or job
        if name not in _logged:
            _logged.add(name)
            logger.warning(f"{name}: graph capture failed ({type(exc).__name__}: {exc}); running eager")
        return None
    finally:
        _restore(states)
