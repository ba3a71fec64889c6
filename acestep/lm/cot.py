"""The LM's chain-of-thought block: parsing its output, re-serialising it for phase 2, and mapping
its metadata onto ``GenerationRequest`` fields (docs/lm.md)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import yaml

from acestep.request import KEY_SCALE_RE, TIME_SIGNATURES, VOCAL_LANGUAGES
from acestep.tasks import MAX_BPM, MAX_DURATION_S, MIN_BPM, MIN_DURATION_S

CODE_TOKEN_RE = re.compile(r"<\|audio_code_(\d+)\|>")

_BLOCK_RE = re.compile(r"<(think|reasoning)>(.*?)</\1>", re.DOTALL)
_OPEN_RE = re.compile(r"<(?:think|reasoning)>")
_CLOSE_RE = re.compile(r"</(?:think|reasoning)>")
_LYRICS_HEADING_RE = re.compile(r"^# Lyrics?[ \t]*(?:\n|$)")
_DIGITS_RE = re.compile(r"[0-9]+")
_IM_END = "<|im_end|>"
_INT_KEYS = ("bpm", "duration")
_STRING_KEYS = ("caption", "genres", "keyscale", "language", "timesignature")
_KNOWN_KEYS = frozenset(_INT_KEYS + _STRING_KEYS)


@dataclass
class LmOutput:
    """What one LM completion said: metadata (LM key names), raw audio codes, lyrics, and the text."""

    metas: dict[str, object]
    codes: list[int]
    lyrics: str
    text: str


def parse_output(text: str) -> LmOutput:
    """Parse an LM completion into metadata, audio codes and lyrics (docs/lm.md).

    Codes are every ``<|audio_code_N|>`` in the text, in order, unclamped (the DiT side clamps).
    Metadata comes from the first ``<think>…</think>`` or ``<reasoning>…</reasoning>`` block; lyrics
    are what follows that block, minus a leading ``# Lyric(s)`` heading, any code tokens and a
    trailing ``<|im_end|>``.

    Fallback for malformed text (this never raises): with no complete block, metadata is read from
    the text before the first code token, starting after an unclosed ``<think>``/``<reasoning>`` if
    there is one (a completion cut off mid-block). A closing tag without its opener (the opener was
    in the prompt) ends the metadata and starts the lyrics; with no closing tag lyrics are empty.
    Lines that do not parse as ``key: value`` are skipped, as are unknown keys and empty values, so
    garbage yields empty metadata rather than an error.
    """
    codes = [int(n) for n in CODE_TOKEN_RE.findall(text)]
    block = _BLOCK_RE.search(text)
    if block:
        meta_text, tail = block.group(2), text[block.end() :]
    else:
        closed = _CLOSE_RE.search(text)
        meta_text, tail = (text[: closed.start()], text[closed.end() :]) if closed else (text, None)
        first_code = CODE_TOKEN_RE.search(meta_text)
        if first_code:
            meta_text = meta_text[: first_code.start()]
        opened = _OPEN_RE.search(meta_text)
        if opened:
            meta_text = meta_text[opened.end() :]
    lyrics = _clean_lyrics(tail) if tail is not None else ""
    return LmOutput(metas=_parse_metas(meta_text), codes=codes, lyrics=lyrics, text=text)


def _parse_metas(block: str) -> dict[str, object]:
    raw: dict[str, list[str]] = {}
    key: str | None = None
    for line in CODE_TOKEN_RE.sub("", block).splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("<"):
            continue
        if line[0] in " \t":
            if key is not None:
                raw[key].append(stripped)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            # An unindented line without a key is not part of any value; it also ends the previous
            # key so that stray indented text after it is not glued onto, say, the caption.
            key = None
            continue
        key = name.strip().lower()
        raw[key] = [value.strip()]
    metas: dict[str, object] = {}
    for name, parts in raw.items():
        if name not in _KNOWN_KEYS:
            continue
        value = _unquote(" ".join(p for p in parts if p))
        if not value:
            continue
        metas[name] = _to_int(value) if name in _INT_KEYS else value
    return metas


def _unquote(value: str) -> str:
    # serialize_cot's yaml.dump quotes strings YAML would misread ('no', '123', 'a: b'); undo that
    # so a round trip gives the original value back. Unquoted text is taken literally.
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(loaded, str):
            return loaded.strip()
    return value


def _to_int(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


def _clean_lyrics(tail: str) -> str:
    tail = CODE_TOKEN_RE.sub("", tail).strip()
    if tail.endswith(_IM_END):
        tail = tail[: -len(_IM_END)].rstrip()
    return _LYRICS_HEADING_RE.sub("", tail, count=1).strip()


def serialize_cot(metas: dict) -> str:
    """The phase-2 CoT block, ``<think>\\n{yaml}\\n</think>`` (docs/lm.md).

    ``genres`` and empty values are dropped, a ``/4`` time signature becomes its numerator, and
    digit strings become integers. Keys are sorted and PyYAML's default width wraps long captions
    onto indented lines, as upstream feeds the model. Empty metadata gives ``<think>\\n</think>``.
    """
    clean: dict[str, object] = {}
    for key, value in metas.items():
        if key == "genres" or value is None:
            continue
        if isinstance(value, str):
            value = value.strip()
            if key == "timesignature" and value.endswith("/4"):
                value = value[:-2].strip()
            if _DIGITS_RE.fullmatch(value):
                value = int(value)
        if value in ("", [], {}, ()):
            continue
        clean[key] = value
    if not clean:
        return "<think>\n</think>"
    body = yaml.dump(clean, allow_unicode=True, sort_keys=True).rstrip("\n")
    return f"<think>\n{body}\n</think>"


def metas_for_dit(metas: dict) -> dict:
    """Map parsed LM metadata to ``GenerationRequest`` field names, keeping only valid values.

    bpm → ``bpm`` (an integer), keyscale → ``key_scale``, timesignature → ``time_signature`` (the
    numerator string), duration → ``audio_duration`` (seconds), language → ``vocal_language`` and
    caption → ``caption``. Values outside acestep.tasks' bounds, unparsable and "N/A" values are
    dropped, so the caller can fill missing request fields without the request validator rejecting
    the LM's guesses.
    """
    values = {k: v for k, v in metas.items() if not (isinstance(v, str) and v.strip().upper() == "N/A")}
    out: dict[str, object] = {}
    bpm = _as_number(values.get("bpm"))
    if bpm is not None and bpm == int(bpm) and MIN_BPM <= bpm <= MAX_BPM:
        out["bpm"] = int(bpm)
    key = values.get("keyscale")
    if isinstance(key, str) and KEY_SCALE_RE.match(key.strip()):
        out["key_scale"] = key.strip()
    signature = values.get("timesignature")
    if isinstance(signature, (str, int)) and not isinstance(signature, bool):
        numerator = TIME_SIGNATURES.get(str(signature).strip())
        if numerator:
            out["time_signature"] = numerator
    duration = _as_number(values.get("duration"))
    if duration is not None and MIN_DURATION_S <= duration <= MAX_DURATION_S:
        out["audio_duration"] = float(duration)
    language = values.get("language")
    if isinstance(language, str) and language.strip().lower() in VOCAL_LANGUAGES:
        out["vocal_language"] = language.strip().lower()
    caption = values.get("caption")
    if isinstance(caption, str) and caption.strip():
        out["caption"] = caption.strip()
    return out


def _as_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
