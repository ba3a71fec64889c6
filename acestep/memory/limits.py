"""The limits in force (a tier, then the operator's overrides) and the check of a request against them.

A request over a limit is refused with a message naming the limit, where it came from and how to
change it. Nothing is clamped silently (upstream clamped durations and batch sizes behind the
user's back).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from acestep.memory.tiers import LM_SIZES, Tier, lm_size_of, tier_for_gib
from acestep.request import GenerationRequest
from acestep.settings import current as current_settings
from acestep.settings import parse_bool_setting
from acestep.tasks import AUTO_DURATION_S, CODES_PER_SECOND, SOURCE_TASKS

_CODE = re.compile(r"<\|audio_code_\d+\|>")


class MemoryLimitError(ValueError):
    """A request that cannot run within this machine's limits (a 4xx for HTTP clients)."""

    def __init__(self, message: str, limit: str, value: float, allowed: float):
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.allowed = allowed


def _positive(name: str, value: str | None, kind: type) -> float | int | None:
    if value is None or not value.strip():
        return None
    try:
        number = kind(float(value))
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return number


@dataclass(frozen=True)
class Limits:
    """What this process allows. ``origin`` says, per field, which tier or setting decided it."""

    tier: Tier
    gib: float | None  # the memory size the tier was looked up from (None: no GPU)
    simulated: bool  # the size came from MAX_CUDA_VRAM
    max_duration: float
    max_duration_lm: float
    max_batch: int
    max_batch_lm: int
    offload_to_cpu: bool
    offload_dit_to_cpu: bool
    lm_enabled: bool
    origin: dict[str, str] = field(default_factory=dict)
    stream_dit: bool = False  # the DiT runs streamed block by block (memory/fit.py decides)

    @classmethod
    def resolve(
        cls, tier: Tier, gib: float | None, simulated: bool = False, env: Mapping[str, str] | None = None
    ) -> Limits:
        """The tier's limits with ``ACESTEP_MAX_DURATION``, ``ACESTEP_MAX_BATCH_SIZE``,
        ``ACESTEP_OFFLOAD_TO_CPU``, ``ACESTEP_OFFLOAD_DIT_TO_CPU`` and ``ACESTEP_INIT_LLM`` applied."""
        env = current_settings() if env is None else env
        origin = dict.fromkeys(
            ("max_duration", "max_batch", "offload_to_cpu", "offload_dit_to_cpu", "lm_enabled"), tier.name
        )
        duration = _positive("ACESTEP_MAX_DURATION", env.get("ACESTEP_MAX_DURATION"), float)
        batch = _positive("ACESTEP_MAX_BATCH_SIZE", env.get("ACESTEP_MAX_BATCH_SIZE"), int)
        offload = parse_bool_setting("ACESTEP_OFFLOAD_TO_CPU", env.get("ACESTEP_OFFLOAD_TO_CPU"))
        offload_dit = parse_bool_setting("ACESTEP_OFFLOAD_DIT_TO_CPU", env.get("ACESTEP_OFFLOAD_DIT_TO_CPU"))
        lm = parse_bool_setting("ACESTEP_INIT_LLM", env.get("ACESTEP_INIT_LLM"))
        for key, setting, value in (
            ("max_duration", "ACESTEP_MAX_DURATION", duration),
            ("max_batch", "ACESTEP_MAX_BATCH_SIZE", batch),
            ("offload_to_cpu", "ACESTEP_OFFLOAD_TO_CPU", offload),
            ("offload_dit_to_cpu", "ACESTEP_OFFLOAD_DIT_TO_CPU", offload_dit),
            ("lm_enabled", "ACESTEP_INIT_LLM", lm),
        ):
            if value is not None:
                origin[key] = setting
        offload_final = tier.offload_to_cpu if offload is None else offload
        # Upstream: the DiT is only offloaded together with the VAE and text encoder.
        dit_choice = tier.offload_dit_to_cpu if offload_dit is None else offload_dit
        offload_dit_final = offload_final and dit_choice
        return cls(
            tier=tier,
            gib=gib,
            simulated=simulated,
            max_duration=tier.max_duration if duration is None else duration,
            max_duration_lm=tier.max_duration_lm if duration is None else duration,
            max_batch=tier.max_batch if batch is None else int(batch),
            max_batch_lm=tier.max_batch_lm if batch is None else int(batch),
            offload_to_cpu=offload_final,
            offload_dit_to_cpu=offload_dit_final,
            lm_enabled=(tier.lm_default if lm is None else lm) and bool(tier.lm_sizes or lm),
            origin=origin,
        )

    @classmethod
    def for_gpu(cls, total_gib: float | None, env: Mapping[str, str] | None = None) -> Limits:
        """Limits for a GPU of ``total_gib`` (None: no GPU); ``MAX_CUDA_VRAM`` makes it look smaller."""
        env = current_settings() if env is None else env
        cap = _positive("MAX_CUDA_VRAM", env.get("MAX_CUDA_VRAM"), float)
        simulated = bool(total_gib and cap is not None and cap < total_gib)
        gib = cap if simulated else total_gib
        return cls.resolve(tier_for_gib(gib), gib, simulated, env)

    def _where(self, key: str) -> str:
        source = self.origin.get(key, self.tier.name)
        if source.startswith("ACESTEP_"):
            return f"set by {source}"
        size = "no GPU" if self.gib is None else f"{self.gib:.1f} GiB GPU"
        simulated = " (simulated by MAX_CUDA_VRAM)" if self.simulated else ""
        return f"the {source} limit for a {size}{simulated}"

    def tier_words(self) -> str:
        simulated = ", simulated by MAX_CUDA_VRAM" if self.simulated else ""
        return f"the {self.tier.name} tier ({self.gib:.1f} GiB GPU{simulated})"

    def check(
        self, request: GenerationRequest, uses_lm: bool = False, source_seconds: float | None = None
    ) -> None:
        """Raise :class:`MemoryLimitError` if ``request`` does not fit; ``source_seconds`` is the source
        audio's length when the caller already knows it (otherwise the file header is read)."""
        seconds, origin = planned_length(request, source_seconds)
        allowed = self.max_duration_lm if uses_lm else self.max_duration
        with_lm = "with the LM" if uses_lm else "without the LM"
        if seconds > allowed:
            raise MemoryLimitError(
                f"{origin} is {seconds:.1f} s, over the {allowed:.0f} s maximum {with_lm} "
                f"({self._where('max_duration')}). Generate a shorter piece, or raise the limit with "
                f"ACESTEP_MAX_DURATION={int(seconds) + 1} if you know the GPU can hold it.",
                limit="max_duration",
                value=seconds,
                allowed=allowed,
            )
        batch_allowed = self.max_batch_lm if uses_lm else self.max_batch
        if request.batch_size > batch_allowed:
            raise MemoryLimitError(
                f"batch_size {request.batch_size} is over the maximum of {batch_allowed} {with_lm} "
                f"({self._where('max_batch')}). Ask for fewer items, or raise the limit with "
                f"ACESTEP_MAX_BATCH_SIZE={request.batch_size} if you know the GPU can hold it.",
                limit="max_batch",
                value=request.batch_size,
                allowed=batch_allowed,
            )

    def check_lm(self, model_name: str) -> None:
        """Refuse an LM that is switched off or too large for this tier."""
        if not self.lm_enabled:
            raise MemoryLimitError(
                f"this request needs the 5Hz LM, which is off ({self._where('lm_enabled')}); "
                "start with ACESTEP_INIT_LLM=true to allow it",
                limit="lm_enabled",
                value=1,
                allowed=0,
            )
        size = lm_size_of(model_name)
        allowed = self.tier.lm_sizes if self.origin.get("lm_enabled") != "ACESTEP_INIT_LLM" else LM_SIZES
        if size is not None and size not in allowed:
            raise MemoryLimitError(
                f"LM {model_name} ({size}) is too large for {self._where('lm_enabled')}; "
                f"allowed sizes: {', '.join(allowed) or 'none'}",
                limit="lm_size",
                value=LM_SIZES.index(size),
                allowed=len(allowed),
            )

    def as_dict(self) -> dict:
        return {
            "tier": self.tier.name,
            "gpu_gib": None if self.gib is None else round(self.gib, 2),
            "simulated": self.simulated,
            "max_duration": self.max_duration,
            "max_duration_lm": self.max_duration_lm,
            "max_batch": self.max_batch,
            "max_batch_lm": self.max_batch_lm,
            "offload_to_cpu": self.offload_to_cpu,
            "offload_dit_to_cpu": self.offload_dit_to_cpu,
            "stream_dit": self.stream_dit,
            "lm_enabled": self.lm_enabled,
            "lm_sizes": list(self.tier.lm_sizes),
            "recommended_lm": self.tier.recommended_lm,
            "origin": dict(self.origin),
        }


def planned_seconds(request: GenerationRequest, source_seconds: float | None = None) -> float:
    """How many seconds of audio the request will generate, known before anything is loaded."""
    return planned_length(request, source_seconds)[0]


def planned_length(request: GenerationRequest, source_seconds: float | None = None) -> tuple[float, str]:
    """The generated length in seconds and what decides it (for messages)."""
    codes = len(_CODE.findall(request.audio_code_string))
    if codes:
        return codes / CODES_PER_SECOND, f"the audio codes ({codes} at {CODES_PER_SECOND} Hz)"
    if request.effective_task in SOURCE_TASKS and request.src_audio:
        seconds = source_seconds if source_seconds is not None else _file_seconds(request.src_audio)
        if request.effective_task == "repaint":
            end = seconds if request.repainting_end <= 0 else max(request.repainting_end, seconds)
            return end - min(request.repainting_start, 0.0), "the repainted source audio"
        if request.effective_task == "lego" and request.repainting_end > seconds:
            return request.repainting_end, "repainting_end (the source padded with silence up to it)"
        return seconds, "the source audio"
    if request.audio_duration > 0:
        return request.audio_duration, "audio_duration"
    return AUTO_DURATION_S, "the default duration (no audio_duration given)"


def _file_seconds(path: str) -> float:
    """The source's length from its header; unreadable files are the audio loader's error to report."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:
        return 0.0
    return info.frames / info.samplerate if info.samplerate else 0.0
