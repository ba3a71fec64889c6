"""``GenerationRequest`` and ``GenerationResult``: the one request type every face submits.

Field names and defaults follow upstream ACE-Step 1.5's ``GenerationParams`` (with the REST
aliases accepted), and every value is checked here, before any tensor is allocated; every text
and list has a bound (``acestep.tasks``).
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import (
    AliasChoices,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from acestep.errors import shown
from acestep.request_edits import EditFields
from acestep.request_sampling import SamplerFields, seed_value
from acestep.tasks import (
    AUDIO_FORMATS,
    COVER_TASKS,
    MAX_AUDIO_CODE_CHARS,
    MAX_BATCH_SIZE,
    MAX_BPM,
    MAX_DURATION_S,
    MAX_LYRICS_CHARS,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_SEED_CHARS,
    MAX_STEPS,
    MAX_TEXT_CHARS,
    MAX_TIMESTEPS,
    MAX_TRACK_NAME_CHARS,
    MIN_BPM,
    SOURCE_TASKS,
    TASK_TYPES,
    TRACK_NAMES,
    flow_edit_applies,
    parse_keep_alive,
)

TIME_SIGNATURES = {"2": "2", "3": "3", "4": "4", "6": "6", "2/4": "2", "3/4": "3", "4/4": "4", "6/8": "6"}
KEY_SCALE_RE = re.compile(r"^[A-G](#|b|♯|♭)? (major|minor)$", re.IGNORECASE)
VOCAL_LANGUAGES = frozenset(
    "ar az bg bn ca cs da de el en es fa fi fr he hi hr ht hu id is it ja ko la lt ms ne nl no pa pl pt "
    "ro ru sa sk sr sv sw ta te th tl tr uk ur vi yue zh unknown".split()
)
INSTRUMENTAL_LYRICS = "[Instrumental]"
LM_SKIP_TASKS = frozenset({"cover", "cover-nofsq", "repaint", "extract"})  # the LM never runs for these
LM_SWITCHES = ("thinking", "sample_mode", "sample_query", "use_format")  # fields that run the LM
MAX_ADAPTERS = 4  # LoRA adapters one request may combine (upstream's advanced mode has 4 slots)
MAX_LORA_SCALE = 4.0
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")
NO_ADAPTER = "none"  # ``lora="none"``: no adapter, even where a server has a default one
AdapterName = Annotated[str, StringConstraints(max_length=128)]  # ADAPTER_NAME_RE's length
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
SeedList = Annotated[str, StringConstraints(max_length=MAX_SEED_CHARS)]
TrackName = Annotated[str, StringConstraints(max_length=MAX_TRACK_NAME_CHARS)]


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class GenerationRequest(SamplerFields, EditFields):
    """One generation job. Seconds for times; paths for audio inputs. The sampler's and the
    editing fields are declared in ``acestep.request_sampling`` and ``acestep.request_edits``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", validate_assignment=True)

    caption: str = Field("", validation_alias=_alias("caption", "prompt"), max_length=MAX_TEXT_CHARS)
    lyrics: str = Field("", max_length=MAX_LYRICS_CHARS)
    instrumental: bool = False
    task_type: str = Field("text2music", max_length=MAX_NAME_CHARS)
    instruction: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    track_name: str | None = Field(None, max_length=MAX_TRACK_NAME_CHARS)
    track_classes: list[TrackName] | None = Field(
        None, validation_alias=_alias("track_classes", "complete_track_classes"), max_length=len(TRACK_NAMES)
    )
    src_audio: str | None = Field(
        None, validation_alias=_alias("src_audio", "src_audio_path"), max_length=MAX_PATH_CHARS
    )
    reference_audio: str | None = Field(
        None, validation_alias=_alias("reference_audio", "reference_audio_path"), max_length=MAX_PATH_CHARS
    )
    audio_code_string: str = Field(
        "", validation_alias=_alias("audio_code_string", "audio_codes"), max_length=MAX_AUDIO_CODE_CHARS
    )
    audio_duration: float = Field(-1.0, validation_alias=_alias("audio_duration", "duration"))
    bpm: int | None = None
    key_scale: str = Field("", validation_alias=_alias("key_scale", "keyscale"), max_length=MAX_NAME_CHARS)
    time_signature: str = Field(
        "", validation_alias=_alias("time_signature", "timesignature"), max_length=MAX_NAME_CHARS
    )
    vocal_language: str = Field(
        "unknown", validation_alias=_alias("vocal_language", "language"), max_length=MAX_NAME_CHARS
    )
    inference_steps: int = Field(
        8, ge=1, le=MAX_STEPS, validation_alias=_alias("inference_steps", "num_inference_steps")
    )
    guidance_scale: float = Field(7.0, ge=0.0, le=50.0)
    shift: float = Field(3.0, gt=0.0, le=10.0)
    timesteps: list[float] | None = Field(None, max_length=MAX_TIMESTEPS)
    cfg_interval_start: float = Field(0.0, ge=0.0, le=1.0)
    cfg_interval_end: float = Field(1.0, ge=0.0, le=1.0)
    seed: int | SeedList = -1
    use_random_seed: bool = True
    batch_size: int = Field(2, ge=1, le=MAX_BATCH_SIZE)
    # Finite and bounded: lego and repaint pad the source up to repainting_end (docs/tasks.md).
    repainting_start: float = Field(0.0, ge=-MAX_DURATION_S, le=MAX_DURATION_S)
    repainting_end: float = Field(-1.0, ge=-MAX_DURATION_S, le=MAX_DURATION_S)
    audio_cover_strength: float = Field(1.0, ge=0.0, le=1.0)
    audio_format: str = Field("flac", max_length=MAX_NAME_CHARS)
    enable_normalization: bool = True
    normalization_db: float = Field(-1.0, le=0.0, ge=-60.0)
    # The 5 Hz LM (docs/lm.md). thinking, sample_mode/sample_query and use_format run it; the
    # use_cot_* switches (upstream's defaults, true) only shape a run that one of those asked for.
    thinking: bool = False
    use_cot_caption: bool = Field(True, validation_alias=_alias("use_cot_caption", "cot_caption"))
    use_cot_language: bool = Field(True, validation_alias=_alias("use_cot_language", "cot_language"))
    use_cot_metas: bool = Field(True, validation_alias=_alias("use_cot_metas", "cot_metas"))
    sample_mode: bool = False
    sample_query: str = Field("", max_length=MAX_TEXT_CHARS)
    use_format: bool = False
    lm_temperature: float = Field(0.85, ge=0.0, le=5.0)
    lm_cfg_scale: float = Field(2.0, ge=0.0, le=10.0)
    lm_top_k: int = Field(0, ge=0, le=100000)
    lm_top_p: float = Field(0.9, gt=0.0, le=1.0)
    lm_repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    lm_negative_prompt: str = Field("NO USER INPUT", max_length=MAX_TEXT_CHARS)
    # LoRA adapters by name (from ACESTEP_LORA_DIR) and their scales: one scale for all, or one each.
    # None: no preference (a server then applies its default adapter, if one is set); []: none.
    lora: list[AdapterName] | None = Field(
        None, validation_alias=_alias("lora", "loras", "lora_name"), max_length=MAX_ADAPTERS
    )
    lora_scale: list[float] = Field(
        default_factory=lambda: [1.0],
        validation_alias=_alias("lora_scale", "lora_scales"),
        max_length=MAX_ADAPTERS,
    )
    # How long models stay loaded after this job (a duration, 0 or -1); the server may forbid it.
    keep_alive: Name | float | None = Field(None, validation_alias=_alias("keep_alive", "keepAlive"))

    @field_validator("src_audio", "reference_audio", mode="before")
    @classmethod
    def _path(cls, value: object) -> object:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and "\0" in value:  # no file has one; open() would raise, not refuse
            raise ValueError("the path contains a NUL byte")
        return value

    @field_validator("lora", mode="before")
    @classmethod
    def _lora(cls, value: object) -> object:
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError("lora must be an adapter name, a comma-separated list or a list of names")
        names = [str(item).strip() for item in items if str(item).strip()]
        if isinstance(value, str) and not names:
            return None  # an empty form field: no preference
        if [name.lower() for name in names] == [NO_ADAPTER]:
            return []
        if len(names) > MAX_ADAPTERS:
            raise ValueError(f"at most {MAX_ADAPTERS} LoRA adapters per request, got {len(names)}")
        bad = [name for name in names if not ADAPTER_NAME_RE.match(name)]
        if bad:
            raise ValueError(f"lora names are adapter names in the LoRA folder, not paths: {shown(bad)}")
        if len(set(names)) != len(names):
            raise ValueError(f"lora names an adapter twice: {names}")
        return names

    @field_validator("lora_scale", mode="before")
    @classmethod
    def _lora_scale(cls, value: object) -> object:
        if value is None:
            return [1.0]
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()] or [1.0]
        items = value if isinstance(value, list | tuple) else [value]
        if len(items) > MAX_ADAPTERS:
            raise ValueError(f"lora_scale has {len(items)} values; at most one per adapter ({MAX_ADAPTERS})")
        scales = []
        for item in items:
            try:
                scale = float(item)  # type: ignore[arg-type]
            except (TypeError, ValueError, OverflowError):
                raise ValueError(
                    f"lora_scale must be a number or a list of numbers, got {shown(value)}"
                ) from None
            if not 0.0 <= scale <= MAX_LORA_SCALE:  # NaN fails too
                raise ValueError(f"lora_scale must be between 0 and {MAX_LORA_SCALE:g}, got {shown(item)}")
            scales.append(scale)
        return scales

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: str | float | None) -> str | float | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        parse_keep_alive(value)
        return value

    @field_validator("task_type")
    @classmethod
    def _task(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in TASK_TYPES:
            raise ValueError(f"unknown task_type {value!r}; expected one of {', '.join(TASK_TYPES)}")
        return value

    @field_validator("track_name")
    @classmethod
    def _track(cls, value: str | None) -> str | None:
        # Any printable name (upstream's REST rule); one outside TRACK_NAMES is a warning (tasks.track_notes).
        if value is None or not value.strip():
            return None
        if not value.isprintable():
            raise ValueError(f"track_name must be printable text, got {shown(value)}")
        return value.strip().lower()

    @field_validator("track_classes", mode="before")
    @classmethod
    def _classes(cls, value: object) -> list[str] | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str | list | tuple):
            raise ValueError("track_classes must be a list of track names or a comma-separated string")
        items = value.split(",") if isinstance(value, str) else list(value)
        if len(items) > len(TRACK_NAMES):
            raise ValueError(f"track_classes names {len(items)} tracks; there are {len(TRACK_NAMES)}")
        out = [str(v).strip().lower() for v in items if str(v).strip()]
        if not all(v.isprintable() for v in out):
            raise ValueError(f"track_classes must be printable names, got {shown(out)}")
        return out or None

    @field_validator("bpm", mode="before")
    @classmethod
    def _bpm(cls, value: object) -> int | None:
        if value is None or str(value).strip() in ("", "0", "N/A"):
            return None
        try:
            bpm = int(float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"bpm must be a number between {MIN_BPM} and {MAX_BPM}, got {shown(value)}"
            ) from None
        if not MIN_BPM <= bpm <= MAX_BPM:
            raise ValueError(f"bpm must be between {MIN_BPM} and {MAX_BPM}, got {bpm}")
        return bpm

    @field_validator("key_scale")
    @classmethod
    def _key(cls, value: str) -> str:
        if not value.strip() or value.strip() == "N/A":
            return ""
        if not KEY_SCALE_RE.match(value.strip()):
            raise ValueError(f"key_scale {value!r} is not like 'C major' or 'F# minor'")
        return value.strip()

    @field_validator("time_signature", mode="before")
    @classmethod
    def _time_signature(cls, value: object) -> str:
        text = "" if value is None else str(value).strip()
        if text in ("", "N/A"):
            return ""
        if text not in TIME_SIGNATURES:
            raise ValueError(
                f"time_signature must be one of 2, 3, 4, 6 (2/4, 3/4, 4/4, 6/8), got {shown(text)}"
            )
        return TIME_SIGNATURES[text]

    @field_validator("vocal_language")
    @classmethod
    def _language(cls, value: str) -> str:
        value = value.strip().lower() or "unknown"
        if value not in VOCAL_LANGUAGES:
            raise ValueError(f"unknown vocal_language {value!r}")
        return value

    @field_validator("audio_duration")
    @classmethod
    def _duration(cls, value: float) -> float:
        if value > MAX_DURATION_S:
            raise ValueError(f"audio_duration must be at most {MAX_DURATION_S:.0f} s, got {value}")
        if value < 0 and value != -1:
            # -1 (and 0) mean "automatic", as upstream; other negatives are mistakes, not requests.
            raise ValueError(f"audio_duration must be positive seconds, or -1 for automatic, got {value}")
        if value != value:  # NaN
            raise ValueError("audio_duration must be a number of seconds")
        return value

    @field_validator("audio_format")
    @classmethod
    def _format(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in AUDIO_FORMATS:
            raise ValueError(f"audio_format must be one of {', '.join(AUDIO_FORMATS)}, got {value!r}")
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value: object) -> object:
        return seed_value("seed", value, -1)

    @field_validator("timesteps")
    @classmethod
    def _timesteps(cls, value: list[float] | None) -> list[float] | None:
        if value is None or len(value) == 0:
            return None
        if any(not 0.0 <= t <= 1.0 for t in value):
            raise ValueError("timesteps must lie in [0, 1]")
        if any(b > a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError("timesteps must be non-increasing (from 1 towards 0)")
        if value[0] <= 0.0:
            raise ValueError("timesteps needs a value above 0 (all zeros would sample nothing)")
        return value

    @model_validator(mode="after")
    def _cross_fields(self) -> GenerationRequest:
        if self.cfg_interval_start > self.cfg_interval_end:
            raise ValueError("cfg_interval_start must be <= cfg_interval_end")
        has_codes = bool(self.audio_code_string.strip())
        if self.task_type == "lego" and has_codes:
            raise ValueError(
                "lego generates a stem against the source audio; audio codes cannot replace the source "
                "(send src_audio and leave audio_code_string empty)"
            )
        if (
            self.task_type in SOURCE_TASKS
            and not self.src_audio
            and not (self.task_type in COVER_TASKS and has_codes)
        ):
            raise ValueError(f"task {self.task_type!r} requires src_audio")
        if self.repainting_end > 0 and self.repainting_start >= self.repainting_end:
            raise ValueError(
                f"repainting_start ({self.repainting_start}) must be before "
                f"repainting_end ({self.repainting_end})"
            )
        if flow_edit_applies(self.task_type, self.flow_edit_morph):
            self.check_flow_edit(bool(self.src_audio), has_codes, self.inference_steps)
        if self.task_type == "lego" and self.repainting_start < 0:
            raise ValueError("lego windows lie inside the source: repainting_start must be >= 0")
        if len(self.lora_scale) > 1 and len(self.lora_scale) != len(self.lora or []):
            raise ValueError(
                f"lora_scale has {len(self.lora_scale)} values for {len(self.lora or [])} adapters; "
                "give one scale for all, or one per adapter"
            )
        return self

    @property
    def adapters(self) -> tuple[tuple[str, float], ...]:
        """(name, scale) of every adapter this request names, in order."""
        names = self.lora or []
        scales = self.lora_scale if len(self.lora_scale) == len(names) else self.lora_scale[:1] * len(names)
        return tuple(zip(names, scales, strict=True))

    @property
    def effective_task(self) -> str:
        """Upstream rewrites text2music with audio codes into cover."""
        if self.task_type == "text2music" and self.audio_code_string.strip():
            return "cover"
        return self.task_type

    @property
    def field_notes(self) -> list[str]:
        """The fields sent that change nothing for this request (a job's warnings name them);
        what depends on the model is noted when the engine resolves it."""
        task = self.effective_task
        flow_edit = flow_edit_applies(task, self.flow_edit_morph)
        return self.sampling_notes(retake_seed_used=flow_edit) + self.edit_notes(task)

    @property
    def lm_switches(self) -> list[str]:
        """The fields that ask for the 5 Hz LM (a refusal names them); defaults never do: upstream's
        true ``use_cot_*`` ran it silently."""
        asked = (self.thinking, self.sample_mode, bool(self.sample_query.strip()), self.use_format)
        return [name for name, on in zip(LM_SWITCHES, asked, strict=True) if on]

    @property
    def uses_lm(self) -> bool:
        """Whether this job runs the 5 Hz LM: a switch asks, the task is not one upstream skips it
        for (cover, cover-nofsq, repaint, extract) and no flow edit works on the source."""
        skipped = self.task_type in LM_SKIP_TASKS or flow_edit_applies(self.task_type, self.flow_edit_morph)
        return not skipped and bool(self.lm_switches)

    @property
    def wants_random_seed(self) -> bool:
        """Upstream ignores a written seed while ``use_random_seed`` keeps its default of true; here
        a seed the caller wrote is honoured unless they also set ``use_random_seed=True`` explicitly."""
        if "use_random_seed" in self.model_fields_set:
            return self.use_random_seed
        return not ("seed" in self.model_fields_set and str(self.seed).strip() not in ("-1", ""))

    @property
    def lyrics_text(self) -> str:
        return INSTRUMENTAL_LYRICS if self.instrumental and not self.lyrics.strip() else self.lyrics
