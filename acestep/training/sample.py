"""One training sample and the checks on its values, shared by the folder scan, the dataset file
loader and edits, so a value is refused for the same reason wherever it comes from.

Torch-free and library-free: the API process, the CLI and the UI read datasets without loading a
model. Field names and defaults follow upstream ACE-Step 1.5's ``AudioSample`` (its dataset JSON).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acestep.errors import shown
from acestep.tasks import MAX_BPM, MAX_LYRICS_CHARS, MAX_NAME_CHARS, MAX_TEXT_CHARS, MIN_BPM

# Upstream's SUPPORTED_AUDIO_FORMATS (dataset_builder_modules/models.py).
AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".opus")
# What upstream writes as the lyrics of an instrumental track, and its default language.
INSTRUMENTAL = "[Instrumental]"
UNKNOWN_LANGUAGE = "unknown"
TAG_POSITIONS = ("prepend", "append", "replace")  # where upstream puts a dataset's custom tag
MAX_GENRE_RATIO = 100  # upstream's genre_ratio is a percentage


class DatasetError(ValueError):
    """A dataset, or one of its values, that cannot be used; the message says why."""


@dataclass
class Sample:
    """One audio file and what training reads about it."""

    name: str  # unique within the dataset: the file stem, with -2, -3 ... for repeats
    audio_path: str  # absolute
    caption: str = ""
    lyrics: str = ""  # INSTRUMENTAL for instrumental tracks, as upstream writes it
    bpm: int | None = None
    keyscale: str = ""
    timesignature: str = ""
    language: str = UNKNOWN_LANGUAGE
    duration: float | None = None  # seconds, from the file header
    is_instrumental: bool = False
    genre: str = ""  # upstream's genre tags: kept so a dataset file round-trips

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def labelled(self) -> bool:
        """Upstream's ``labeled``: the sample has a caption."""
        return bool(self.caption.strip())


def _text(limit: int):
    def check(field: str, value: Any) -> str:
        if not isinstance(value, str):
            raise DatasetError(f"{field} must be text, got {shown(value)}")
        value = value.strip()
        if len(value) > limit:
            raise DatasetError(f"{field} is {len(value)} characters long; the limit is {limit}")
        return value

    return check


def _bpm(field: str, value: Any) -> int | None:
    """A whole number of beats per minute, or None; "120", 120.0 and 119.6 read as 120."""
    if value is None or value == "":
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    finite = isinstance(number, int) or (isinstance(number, float) and math.isfinite(number))
    if isinstance(number, bool) or not finite:
        raise DatasetError(f"{field} must be a number from {MIN_BPM} to {MAX_BPM}, got {shown(value)}")
    if not MIN_BPM <= number <= MAX_BPM:
        raise DatasetError(f"{field} {shown(value)} is outside {MIN_BPM}-{MAX_BPM}")
    return round(number)


def _timesignature(field: str, value: Any) -> str:
    """Upstream writes "4"; a number (4) is read as its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return _text(MAX_NAME_CHARS)(field, value)


def _language(field: str, value: Any) -> str:
    return _text(MAX_NAME_CHARS)(field, value) or UNKNOWN_LANGUAGE


def _flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DatasetError(f"{field} must be true or false, got {shown(value)}")
    return value


# The sample fields a sidecar, a dataset file or an edit may set, each with its check.
CHECKS = {
    "caption": _text(MAX_TEXT_CHARS),
    "lyrics": _text(MAX_LYRICS_CHARS),
    "bpm": _bpm,
    "keyscale": _text(MAX_NAME_CHARS),
    "timesignature": _timesignature,
    "language": _language,
    "is_instrumental": _flag,
    "genre": _text(MAX_TEXT_CHARS),
}
EDITABLE = tuple(CHECKS)


def checked(field: str, value: Any) -> Any:
    """``value`` as the sample holds it; DatasetError naming the field and the reason otherwise."""
    if field not in CHECKS:
        raise DatasetError(f"{field!r} is not a sample field; the fields are {', '.join(EDITABLE)}")
    return CHECKS[field](field, value)


def settle_instrumental(values: dict[str, Any]) -> dict[str, Any]:
    """Upstream's rule between ``lyrics`` and ``is_instrumental``: an instrumental track's lyrics
    are INSTRUMENTAL, and lyrics that say INSTRUMENTAL (or none at all) make the track instrumental
    unless ``is_instrumental`` says otherwise."""
    lyrics = values.get("lyrics", "")
    says_instrumental = lyrics.strip().lower() == INSTRUMENTAL.lower()
    instrumental = values.get("is_instrumental")
    if instrumental is None:
        instrumental = says_instrumental or not lyrics.strip()
    values["is_instrumental"] = instrumental
    values["lyrics"] = INSTRUMENTAL if instrumental else ("" if says_instrumental else lyrics)
    return values


def apply_changes(sample: Sample, changes: dict[str, Any]) -> Sample:
    """``sample`` with ``changes`` checked and applied, or DatasetError (the sample is unchanged).
    Lyrics without ``is_instrumental`` make the track a sung one; ``is_instrumental`` alone clears
    or restores the INSTRUMENTAL marker; both together must agree."""
    new = {field: checked(field, value) for field, value in changes.items()}
    if new.get("is_instrumental") is True and new.get("lyrics", INSTRUMENTAL) not in ("", INSTRUMENTAL):
        raise DatasetError("an instrumental sample has no lyrics: set lyrics or is_instrumental, not both")
    merged = {field: getattr(sample, field) for field in EDITABLE} | new
    if "lyrics" in new and "is_instrumental" not in new:
        merged["is_instrumental"] = None  # decided by the new lyrics
    if new.get("is_instrumental") is False and "lyrics" not in new and sample.is_instrumental:
        merged["lyrics"] = ""
    settle_instrumental(merged)
    for field, value in merged.items():
        setattr(sample, field, value)
    return sample


def upstream_entry(sample: Sample, custom_tag: str, index: int) -> dict[str, Any]:
    """The sample as upstream's ``AudioSample.to_dict`` writes it, plus our unique ``name`` (upstream
    keeps only the keys it knows, so the extra key is harmless)."""
    sung = "" if sample.is_instrumental else sample.lyrics
    return {
        "id": f"{index:08x}",
        "name": sample.name,
        "audio_path": sample.audio_path,
        "filename": Path(sample.audio_path).name,
        "caption": sample.caption,
        "genre": sample.genre,
        "lyrics": sample.lyrics,
        "raw_lyrics": sung,
        "formatted_lyrics": "",
        "bpm": sample.bpm,
        "keyscale": sample.keyscale,
        "timesignature": sample.timesignature,
        "duration": sample.duration,
        "language": sample.language,
        "is_instrumental": sample.is_instrumental,
        "custom_tag": custom_tag,
        "labeled": sample.labelled,
        "prompt_override": None,
    }


def entry_values(entry: dict[str, Any]) -> dict[str, Any]:
    """The checked sample fields of one upstream-shaped entry (a dataset file's sample, or a
    ``<name>.json`` sidecar): upstream's aliases read, empty values skipped as upstream does, and
    the instrumental rule applied last. DatasetError names the first bad field."""
    raw: dict[str, Any] = {}
    for field, aliases in (
        ("caption", ("caption",)),
        ("genre", ("genre", "genres")),
        ("lyrics", ("lyrics", "raw_lyrics")),
        ("bpm", ("bpm",)),
        ("keyscale", ("keyscale", "key_scale", "key")),
        ("timesignature", ("timesignature", "time_signature")),
        ("language", ("language", "vocal_language")),
    ):
        value = next((entry[a] for a in aliases if entry.get(a) not in (None, "")), None)
        if value is not None:
            raw[field] = checked(field, value)
    for key in ("is_instrumental", "instrumental"):
        if key in entry and entry[key] is not None:
            raw["is_instrumental"] = checked("is_instrumental", entry[key])
            break
    else:
        # Upstream: a language other than instrumental/unknown means a sung track.
        if raw.get("language", UNKNOWN_LANGUAGE) not in (UNKNOWN_LANGUAGE, "instrumental"):
            raw["is_instrumental"] = False
    return raw
