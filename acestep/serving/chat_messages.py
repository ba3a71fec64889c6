"""What a chat request's ``messages`` ask for: a caption, lyrics and audio parts.

The rules are upstream's chat adapter's (docs/api.md, "Chat completions"): only the last user
message counts; its text parts are joined with newlines; the first ``<prompt>`` and ``<lyrics>``
tags (any case, across lines) win; without tags, text that looks like lyrics is the lyrics and
anything else the caption. Audio parts are kept in order, each with the name of the place it came
from, so a refusal can say which part was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from acestep.tasks import MAX_LYRICS_CHARS, MAX_TEXT_CHARS

TAGS = ("prompt", "lyrics")
# The most text a message may carry: a caption and lyrics at their bounds, tags and a little more.
# Checked before the text is searched, so a huge message costs nothing (tasks.py holds the bounds).
MAX_MESSAGE_CHARS = MAX_TEXT_CHARS + MAX_LYRICS_CHARS + 1024
# Section markers that make untagged text lyrics rather than a caption (upstream's list).
LYRIC_MARKERS = (
    "[verse", "[chorus", "[bridge", "[intro", "[outro", "[hook", "[pre-chorus", "[refrain", "[inst",
)  # fmt: skip
# Short lines, several of them: a lyric sheet without markers.
LYRIC_MIN_LINES = 4
LYRIC_MAX_AVERAGE_CHARS = 60


class MessageTooLong(ValueError):
    """The user message's text is past MAX_MESSAGE_CHARS (the message says where and how long)."""


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
    """The first ``<prompt>`` and ``<lyrics>`` contents (None when absent; any case, across lines)
    and the text left. A plain search from the first opening tag: linear in the text, whatever it
    holds (an unclosed tag repeated costs no more than one)."""
    found: dict[str, str | None] = {}
    for name in TAGS:
        opening, closing = f"<{name}>", f"</{name}>"
        lowered = text.lower()  # same length as text: tags are ASCII
        start = lowered.find(opening)
        end = lowered.find(closing, start + len(opening)) if start >= 0 else -1
        found[name] = text[start + len(opening) : end].strip() if end >= 0 else None
        if end >= 0:
            text = text[:start] + text[end + len(closing) :]
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
    if len(text) > MAX_MESSAGE_CHARS:
        raise MessageTooLong(
            f"messages[{found[0]}].content: the text is {len(text)} characters; at most {MAX_MESSAGE_CHARS}"
        )
    if not text:
        return ParsedMessages(audio=audio)
    prompt, lyrics, rest = _split_tags(text)
    if prompt is not None or lyrics is not None:
        # Untagged text is the caption only when no <prompt> tag gave one.
        return ParsedMessages(prompt if prompt is not None else rest, lyrics or "", text, audio)
    if looks_like_lyrics(text):
        return ParsedMessages("", text, text, audio)
    return ParsedMessages(text, "", text, audio)
