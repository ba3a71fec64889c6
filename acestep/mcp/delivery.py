"""How a finished job comes back to an MCP client: a JSON summary, then each file's audio embedded
while the call's total fits ``ACESTEP_MCP_EMBED_MB``, past it a resource link (the REST app's
``/v1/audio`` over HTTP, behind the same key; a ``file:`` URI over stdio)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import anyio
from mcp.server.fastmcp import Context
from mcp.types import BlobResourceContents, EmbeddedResource, ResourceLink, TextContent

from acestep.jobs.outputs import MEDIA_TYPES, audio_url
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.worker.job import JobInfo

# Audio embedded in one tool result, in MiB; past it, links (0: links only). The API process
# briefly holds several copies of what it embeds (bytes, base64, the JSON message): about 8x.
EMBED_ENV = "ACESTEP_MCP_EMBED_MB"
# What a result says about the LM's plan: the model, what it wrote, the values the DiT then used
# and each item's audio codes.
LM_RESULT_KEYS = (
    "lm_model", "lm_metas", "bpm", "key_scale", "time_signature", "duration", "caption",
    "vocal_language", "audio_codes",
)  # fmt: skip


def embed_budget() -> int:
    """The bytes of audio one result may embed (``ACESTEP_MCP_EMBED_MB``)."""
    return setting_value(current_settings(), EMBED_ENV) * 2**20


def _read_at_most(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when it holds more than ``limit`` (e.g. it grew since its size
    was read): never more is read. ``read(n)`` allocates n bytes first, so n is the file's size."""
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    return data if len(data) <= limit else None


class Delivery:
    """How one call's audio comes back: embedded while the total fits the budget, then links
    (to the REST app's /v1/audio over HTTP, file URIs over stdio)."""

    def __init__(self, budget_bytes: int, ctx: Context | None):
        request = ctx.request_context.request if ctx is not None else None
        url = getattr(request, "url", None)  # a starlette Request over HTTP, None over stdio
        self.ctx = ctx  # also where progress notifications go
        self.budget = budget_bytes
        self.base_url = f"{url.scheme}://{url.netloc}" if url is not None else None

    async def audio(self, paths: list[str]) -> tuple[list, list[bool]]:
        left, content, embedded = self.budget, [], []
        for path in map(Path, paths):
            mime = MEDIA_TYPES.get(path.suffix, "audio/wav")
            size = (await anyio.Path(path).stat()).st_size
            data = await anyio.to_thread.run_sync(_read_at_most, path, size) if size <= left else None
            embedded.append(data is not None)
            if data is not None:
                left -= len(data)
                blob = base64.b64encode(data).decode()
                resource = BlobResourceContents(uri=path.resolve().as_uri(), mimeType=mime, blob=blob)
                content.append(EmbeddedResource(type="resource", resource=resource))
                continue
            uri = self.base_url + audio_url(str(path)) if self.base_url else path.resolve().as_uri()
            link = ResourceLink(type="resource_link", name=path.name, uri=uri, mimeType=mime, size=size)
            content.append(link)
        return content, embedded

    async def result(self, job: JobInfo) -> list:
        """A succeeded job as a tool result: the summary, then each file's audio or link."""
        result = job.result
        audio, embedded = await self.audio(result.audio_paths)
        summary = {
            "task_id": job.id,
            "status": "succeeded",
            "files": result.audio_paths,
            "seeds": result.seeds,
            "durations": [item.duration for item in result.items],
            "model": result.model,
            "lora": result.metas.get("lora", []),
            "embedded": embedded,  # per file: its audio is in this result, else a link to it
            "warnings": result.warnings,  # what the request asked that changed nothing, and other notes
            "timings": result.timings,  # seconds per stage, and the total
        }
        if self.base_url is not None:
            summary["urls"] = [audio_url(path) for path in result.audio_paths]
        if result.metas.get("lm_model"):  # only when the LM ran
            summary |= {key: result.metas.get(key) for key in LM_RESULT_KEYS}
        return [TextContent(type="text", text=json.dumps(summary)), *audio]
