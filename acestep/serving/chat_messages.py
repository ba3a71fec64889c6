"""What a chat request's ``messages`` ask for: a caption, lyrics and audio parts.

The rules are upstream's chat adapter's (docs/api.md, "Chat completions"): only the last user
message counts; its text parts are joined with newlines; the first ``<prompt>`` and ``<lyrics>``
tags (any case, across lines) win; without tags, text that looks like lyrics is the lyrics and
anything else the caption. Audio parts are kept in order, each with the name of the place it came
from, so a refusal can say which part was wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PROMPT_TAG = re.compile(r"<prompt>(.*?)</prompt>", re.DOTALL | re.IGNORECASE)
LYRICS_TAG = re.compile(r"<lyrics>(.*?)</lyrics>", re.DOTALL | re.IGNORECASE)
# Section markers that make untagged text lyrics rather than a caption (upstream's list).
LYRIC_MARKERS = (
    "[verse", "[chorus", "[bridge", "[intro", "[outro", "[hook", "[pre-chorus", "[refrain", "[inst",
)  # fmt: skip
# Short lines, several of them: a lyric sheet without markers.
LYRIC_MIN_LINES = 4
LYRIC_MAX_AVERAGE_CHARS = 60


@dataclass(frozen=True)
class AudioPart:
    """One ``input_audio`` part: its base64 text, the format the client named, and where it was."""

    data: str
    format: str
    where: str  # e.g. "messages[0].content[1].input_audio"


@dataclass(frozen=True)
class ParsedMessages:
    caption: str = ""
    lyrics: str = ""
    text: str = ""  # the user's whole text (sample mode's query)
    audio: list[AudioPart] = field(default_factory=list)


def looks_like_lyrics(text: str) -> bool:
    lowered = text.lower()
    if any(marker in lowered for marker in LYRIC_MARKERS):
        return True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return len(lines) >= LYRIC_MIN_LINES and sum(map(len, lines)) / len(lines) < LYRIC_MAX_AVERAGE_CHARS


def _split_tags(text: str) -> tuple[str | None, str | None, str]:
    """The first ``<prompt>`` and ``<lyrics>`` contents (None when absent) and the text left."""
    found: dict[str, str | None] = {}
    for name, pattern in (("prompt", PROMPT_TAG), ("lyrics", LYRICS_TAG)):
        match = pattern.search(text)
        found[name] = match.group(1).strip() if match else None
        if match:
            text = text[: match.start()] + text[match.end() :]
    return found["prompt"], found["lyrics"], text.strip()


def _last_user_message(messages: list) -> tuple[int, object] | None:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role == "user" and message.content:
            return index, message.content
    return None


def _read_content(index: int, content: object) -> tuple[str, list[AudioPart]]:
    if isinstance(content, str):
        return content.strip(), []
    texts: list[str] = []
    audio: list[AudioPart] = []
    for j, part in enumerate(content if isinstance(content, list) else []):
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str) and part["text"].strip():
            texts.append(part["text"].strip())
        elif part.get("type") == "input_audio":
            payload = part.get("input_audio")
            payload = payload if isinstance(payload, dict) else {}
            data = payload.get("data")
            if data:  # upstream skips an empty part; anything else is checked when it is decoded
                where = f"messages[{index}].content[{j}].input_audio"
                audio.append(AudioPart(str(data), str(payload.get("format") or "mp3"), where))
        # other part types (images, ...) say nothing to a music model: ignored, as upstream does
    return "\n".join(texts), audio


def parse_messages(messages: list) -> ParsedMessages:
    """Caption, lyrics and audio of the last user message with content (``ChatMessage`` items)."""
    found = _last_user_message(messages)
    if found is None:
        return ParsedMessages()
    text, audio = _read_content(*found)
    if not text:
        return ParsedMessages(audio=audio)
    prompt, lyrics, rest = _split_tags(text)
    if prompt is not None or lyrics is not None:
        # Untagged text is the caption only when no <prompt> tag gave one.
        return ParsedMessages(prompt if prompt is not None else rest, lyrics or "", text, audio)
    if looks_like_lyrics(text):
        return ParsedMessages("", text, text, audio)
    return ParsedMessages(text, "", text, audio)
