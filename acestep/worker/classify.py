"""What a failed job tells its client: an exception turned into a ``JobError`` of its kind, with
the advice for an out-of-memory error (no tracebacks in the message)."""

from __future__ import annotations

from acestep.errors import JobError


def oom_advice(limits=None) -> str:
    """What to change after an out-of-memory error, given what is already in force."""
    steps = ["a shorter audio_duration or a smaller batch_size"]
    if limits is None or not limits.offload_to_cpu:
        steps.append("ACESTEP_OFFLOAD_TO_CPU=true")
    elif not limits.offload_dit_to_cpu:
        steps.append("ACESTEP_OFFLOAD_DIT_TO_CPU=true")
    steps.append("a lower ACESTEP_MAX_DURATION for this GPU")
    return "Try " + ", or ".join(steps)


def classify(exc: BaseException, limits=None) -> JobError:
    """A user-facing error for an exception raised by a job (no tracebacks in the message)."""
    from acestep.checkpoints import CheckpointError
    from acestep.engine.audio_io import AudioInputError
    from acestep.engine.disk_full import NoSpaceError
    from acestep.engine.engine import GenerationError
    from acestep.memory.limits import MemoryLimitError

    if isinstance(exc, JobError):
        return exc
    if _is_oom(exc):
        return JobError(
            "oom", f"the GPU ran out of memory ({exc}); the job's memory was released. {oom_advice(limits)}"
        )
    if isinstance(exc, MemoryLimitError):
        return JobError("limit", str(exc))
    if isinstance(exc, AudioInputError | ValueError):
        return JobError("input", str(exc))
    if isinstance(exc, GenerationError):
        return JobError("generation", str(exc))
    if isinstance(exc, CheckpointError):
        return JobError("internal", f"the model could not be loaded: {exc}")
    if isinstance(exc, NoSpaceError):
        return JobError("disk", str(exc))
    return JobError("internal", f"{type(exc).__name__}: {exc}")


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


__all__ = ["classify", "oom_advice"]
