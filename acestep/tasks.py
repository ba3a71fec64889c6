"""The words every layer shares: task types, track names, instructions, the bounds on a request's
values, the lego captions and the keep-alive duration grammar. Pure Python: nothing here imports
a library, so every layer (and the API process's upload check) may use it.
"""

from __future__ import annotations

import math
import re

TASK_TYPES = ("text2music", "repaint", "cover", "cover-nofsq", "extract", "lego", "complete")

# Tasks whose conditioning is built from source audio; cover may use audio codes instead.
SOURCE_TASKS = frozenset({"repaint", "cover", "cover-nofsq", "extract", "lego", "complete"})


# A cover's condition switches to text2music's after ``audio_cover_strength`` of the steps.
COVER_TASKS = frozenset({"cover", "cover-nofsq"})
# Flow edit (``flow_edit_morph``) changes existing audio on these tasks; text2music then reads the
# source too (docs/generation.md).
FLOW_EDIT_TASKS = frozenset({"text2music", "cover", "cover-nofsq"})


def flow_edit_applies(task_type: str, flow_edit_morph: bool) -> bool:
    return flow_edit_morph and task_type in FLOW_EDIT_TASKS


def source_used(task_type: str, has_codes: bool, flow_edit_morph: bool = False) -> bool:
    """Whether a job reads its source audio: a source task without audio codes (codes win over the
    source, as upstream), or a flow edit (it edits the source). An unused source upload is neither
    checked nor decoded (docs/api.md)."""
    return (task_type in SOURCE_TASKS and not has_codes) or flow_edit_applies(task_type, flow_edit_morph)


# Length generated when a request sets no duration and has no source to take it from.
AUTO_DURATION_S = 120.0
# The LM writes audio codes at 5 Hz; each code stands for five 25 Hz latent frames.
CODES_PER_SECOND = 5
# The DiT's latents run at 25 frames a second (48 kHz audio, a 1920-sample hop).
LATENT_FRAMES_PER_SECOND = 25

TRACK_NAMES = (
    "woodwinds",
    "brass",
    "fx",
    "synth",
    "strings",
    "percussion",
    "keyboard",
    "guitar",
    "bass",
    "drums",
    "backing_vocals",
    "vocals",
)
# Any other non-empty name is accepted too (upstream's REST rule): it is upper-cased into the
# instruction like the twelve, and the job warns that the model was trained on the twelve only.
MAX_TRACK_NAME_CHARS = 64
# The output formats a request may ask for (engine/audio_io.py writes each one).
AUDIO_FORMATS = ("flac", "wav", "wav32", "mp3", "opus", "aac")


def track_notes(track_name: str | None, track_classes: list[str] | None = None) -> list[str]:
    """The warnings for track names outside the twelve the model was trained on."""
    names = ([track_name] if track_name else []) + list(track_classes or [])
    unknown = [name for name in dict.fromkeys(names) if name not in TRACK_NAMES]
    if not unknown:
        return []
    return [
        f"track name(s) {', '.join(repr(n) for n in unknown)} are not among the twelve the model was "
        f"trained on ({', '.join(TRACK_NAMES)}); the result may not follow them"
    ]


INSTRUCTIONS = {
    "text2music": "Fill the audio semantic mask based on the given conditions:",
    "repaint": "Repaint the mask area based on the given conditions:",
    "cover": "Generate audio semantic tokens based on the given conditions:",
    # A cover from the raw VAE latents: upstream gives it cover's instruction.
    "cover-nofsq": "Generate audio semantic tokens based on the given conditions:",
    "extract": "Extract the {TRACK_NAME} track from the audio:",
    "extract_default": "Extract the track from the audio:",
    "lego": "Generate the {TRACK_NAME} track based on the audio context:",
    "lego_default": "Generate the track based on the audio context:",
    "complete": "Complete the input track with {TRACK_CLASSES}:",
    "complete_default": "Complete the input track:",
}
DEFAULT_INSTRUCTION = INSTRUCTIONS["text2music"]


def build_instruction(
    task_type: str, track_name: str | None = None, track_classes: list[str] | None = None
) -> str:
    """The instruction upstream's UI and later REST server derive: track names upper-cased."""
    if task_type in ("extract", "lego"):
        if track_name:
            return INSTRUCTIONS[task_type].format(TRACK_NAME=track_name.upper())
        return INSTRUCTIONS[f"{task_type}_default"]
    if task_type == "complete":
        if track_classes:
            return INSTRUCTIONS["complete"].format(TRACK_CLASSES=" | ".join(c.upper() for c in track_classes))
        return INSTRUCTIONS["complete_default"]
    return INSTRUCTIONS.get(task_type, DEFAULT_INSTRUCTION)


def with_colon(instruction: str) -> str:
    """Upstream appends ':' before tokenising when the instruction lacks one."""
    return instruction if instruction.endswith(":") else instruction + ":"


# How large each part of a request may be: every text and list a client sends has a bound.
# Records (with their text) are kept for a day, so a field that no client needs long must not cost
# a job's worth of memory. Each bound sits above what upstream ACE-Step 1.5 uses: songs of 10 to
# 600 s, at most 200 sampling steps, a DiT text prompt cut at 256 tokens and lyrics at 2048 tokens.
MIN_DURATION_S = 10  # the shortest song the LM's metadata may ask for
MAX_DURATION_S = 600.0
MAX_BATCH_SIZE = 8
MIN_BPM = 30  # upstream's tempo range
MAX_BPM = 300
MAX_STEPS = 200
MAX_TIMESTEPS = MAX_STEPS + 1  # a custom schedule may also write its final 0
MAX_TEXT_CHARS = 4096  # caption, instruction, sample query, LM negative prompt
MAX_LYRICS_CHARS = 20000
MAX_NAME_CHARS = 64  # an enumerated value: task, track, key, time signature, language, format
MAX_PATH_CHARS = 4096  # Linux's PATH_MAX
MAX_SEED_CHARS = 1024  # a comma list of seeds, one per batch item
# The codes of the longest song: 5 a second, each "<|audio_code_N|>" (20 characters) with room
# for separators.
MAX_AUDIO_CODE_CHARS = int(MAX_DURATION_S) * CODES_PER_SECOND * 32
SHOWN_CHARS = 80  # how much of a refused value an error message quotes


# The caption a lego job gets when its client sends none (REST /lego, the UI and MCP).
DEFAULT_LEGO_CAPTIONS = {
    "vocals": "soulful indie vocalist, warm, wordless melody, expressive",
    "backing_vocals": "background vocals, close harmony, wordless, warm",
    "drums": "live acoustic drum kit, tight kick and snare, brushed hi-hats",
}


def default_caption(track: str) -> str:
    return DEFAULT_LEGO_CAPTIONS.get(track, f"{track.replace('_', ' ')}, clean, well played, fits the mix")


# Keep-alive: how long loaded models stay after the last job. ``0`` unloads after every job, ``-1``
# (any negative) never unloads, anything else is a duration (``300``, ``"90s"``, ``"5m"``, ``"1h30m"``).
NEVER = math.inf  # the default duration is ACESTEP_KEEP_ALIVE's, in acestep/setting_table.py
UNLOAD_LEVELS = ("park", "free")
_PART = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


class KeepAliveError(ValueError):
    pass


def parse_keep_alive(value: str | float | int | None) -> float:
    """Seconds to keep models loaded after a job; ``math.inf`` means never unload."""
    if value is None:
        raise KeepAliveError("keep_alive is empty")
    if isinstance(value, bool):
        raise KeepAliveError(f"keep_alive must be a duration, 0 or -1, got {value!r}")
    if isinstance(value, int | float):
        return _finite(value)
    text = str(value).strip().lower()
    if text in ("never", "forever"):
        return NEVER
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        return _finite(number)
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise KeepAliveError(
            f"keep_alive {value!r} is not a duration; use seconds (300), '5m', '1h30m', 0 or -1"
        )
    return sum(float(n) * _UNIT[u] for n, u in parts)


def _finite(value: float) -> float:
    """Negative means never; NaN and infinities are refused (a NaN deadline would never expire)."""
    if math.isnan(value) or math.isinf(value):
        raise KeepAliveError(f"keep_alive must be a finite number of seconds, 0 or -1, got {value!r}")
    return NEVER if value < 0 else float(value)
