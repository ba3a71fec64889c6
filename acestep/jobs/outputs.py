"""Facts about a job's output files that every face shares: their media types and their URL."""

from __future__ import annotations

from urllib.parse import quote

# The format a face writes when a request names none: compressed, as upstream's REST API writes
# (its Python API writes flac, GenerationRequest's default). REST and MCP both read it here.
DEFAULT_AUDIO_FORMAT = "mp3"

MEDIA_TYPES = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",  # Ogg/Opus (upstream serves it as audio/mpeg: patches/0046)
    ".aac": "audio/aac",  # ADTS
}


def media_type(suffix: str, default: str = "application/octet-stream") -> str:
    return MEDIA_TYPES.get(suffix.lower(), default)


def audio_url(path: str) -> str:
    """The REST app's link to a result file (``GET /v1/audio``), relative to the server."""
    return f"/v1/audio?path={quote(path, safe='')}"
