"""The answers of ``POST /v1/chat/completions``: upstream's completion and stream-chunk shapes.

Audio comes back as upstream returns it, a list of ``{"type": "audio_url", "audio_url": {"url":
<data URL>}}`` in ``message.audio`` (every clip of the batch, where upstream sends the first only),
its media type taken from the file written (docs/api.md, "Chat completions"; patches/0041).
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from acestep.jobs.outputs import media_type
from acestep.worker.job import Job

NO_METADATA = ("", "N/A", None)
SILENT_LYRICS = ("[inst]", "[instrumental]")
USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def completion_id() -> str:
    return "chatcmpl-" + os.urandom(8).hex()


def data_url(path: str) -> str:
    """A result file as a ``data:`` URL (the results folder is shared in a cluster)."""
    file = Path(path)
    encoded = base64.b64encode(file.read_bytes()).decode("ascii")
    return f"data:{media_type(file.suffix, 'application/octet-stream')};base64,{encoded}"


def audio_parts(job: Job) -> list[dict]:
    """Every clip of a finished job as upstream's ``audio_url`` parts (read in a worker thread)."""
    return [{"type": "audio_url", "audio_url": {"url": data_url(p)}} for p in job.result.audio_paths]


def content_text(job: Job) -> str:
    """The assistant's text: the metadata the clip was made with, then its lyrics."""
    metas, request = job.result.metas, job.request
    lm = metas.get("lm_metas") if isinstance(metas.get("lm_metas"), dict) else {}
    duration = metas.get("duration")
    facts = (
        ("Caption", metas.get("caption") or request.caption),
        ("BPM", metas.get("bpm")),
        ("Duration", f"{duration:g}s" if isinstance(duration, int | float) and duration > 0 else None),
        ("Key", metas.get("key_scale")),
        ("Time Signature", metas.get("time_signature")),
    )
    lines = [f"**{name}:** {value}" for name, value in facts if value not in NO_METADATA]
    sections = ["## Metadata\n" + "\n".join(lines)] if lines else []
    lyrics = str(request.lyrics or lm.get("lyrics") or "").strip()
    if lyrics and lyrics.lower() not in SILENT_LYRICS:
        sections.append(f"## Lyrics\n{lyrics}")
    return "\n\n".join(sections) or "Music generated successfully."


def completion(chat_id: str, model: str, job: Job, audio: list[dict]) -> dict:
    message = {"role": "assistant", "content": content_text(job), "audio": audio or None, "audio_codes": None}
    return {
        "id": chat_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": dict(USAGE),
    }


def chunk(chat_id: str, model: str, delta: dict, finish_reason: str | None = None) -> str:
    """One server-sent event of the stream."""
    body = {
        "id": chat_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(body)}\n\n"


def progress_comment(progress: float, stage: str) -> str:
    """Progress as an SSE comment line: clients that read only ``data:`` lines never see it."""
    return f": progress {progress:.2f} {' '.join(str(stage or 'queued').split())}\n\n"


DONE = "data: [DONE]\n\n"
