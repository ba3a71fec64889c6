"""MCP tools over the same job queue and memory manager as the REST API.

``generate_music``, ``lego_stem``, ``get_status``, ``unload_model``, ``load_model``, and for LoRA
adapters ``list_loras``, ``load_lora`` and ``unload_lora``. Results come
back as file paths (in the JSON summary) and as embedded audio resources, so a client on another
host gets the audio itself. Tools queue work and wait for it; they never touch the GPU.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
from pathlib import Path
from typing import Protocol

import anyio
import soundfile as sf
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import BlobResourceContents, EmbeddedResource, TextContent
from pydantic import ValidationError

from acestep.engine.request import GenerationRequest
from acestep.engine.tasks import TRACK_NAMES
from acestep.serving.routes_compat import MEDIA_TYPES
from acestep.serving.routes_lego import default_caption
from acestep.serving.uploads import UploadError, confine, sniff_audio

TIMEOUT_S = 600.0
# What a result says about the LM's plan: the model, what it wrote, the values the DiT then used
# and each item's audio codes.
LM_RESULT_KEYS = (
    "lm_model", "lm_metas", "bpm", "key_scale", "time_signature", "duration", "caption",
    "vocal_language", "audio_codes",
)  # fmt: skip


class Backend(Protocol):
    """What the tools need: the REST app's state, or a standalone server's own."""

    queue: object  # its ``loras`` (a LoraSelection) fills in and checks each job's adapters
    manager: object
    input_roots: list[Path]
    uploads_dir: Path
    max_upload_bytes: int
    default_steps: int


def _request(values: dict) -> GenerationRequest:
    try:
        return GenerationRequest(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        messages = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ToolError("; ".join(m.replace("Value error, ", "") for m in messages)) from None


async def _run(backend: Backend, request: GenerationRequest, cleanup: list[Path]) -> list:
    from acestep.memory.keep_alive import KeepAliveError
    from acestep.memory.limits import MemoryLimitError
    from acestep.serving.jobs import QueueFull, QueueUnavailable

    queue = backend.queue
    try:
        # In a thread: a cluster's queue is Redis, which must not stall the event loop.
        job = await anyio.to_thread.run_sync(lambda: queue.submit(request, cleanup=cleanup))
    except (QueueFull, QueueUnavailable, MemoryLimitError, KeepAliveError, ValueError) as exc:
        for path in cleanup:
            path.unlink(missing_ok=True)
        raise ToolError(str(exc)) from None
    deadline = time.monotonic() + TIMEOUT_S
    while (job := await anyio.to_thread.run_sync(queue.get, job.id) or job).state in ("queued", "running"):
        if time.monotonic() > deadline:
            await anyio.to_thread.run_sync(queue.cancel, job.id)
            raise ToolError(f"generation timed out after {TIMEOUT_S:.0f} s (task {job.id})")
        await asyncio.sleep(0.05)
    if job.state != "succeeded":
        raise ToolError(f"generation failed: {job.error}")
    result = job.result
    summary = {
        "task_id": job.id,
        "files": result.audio_paths,
        "seeds": result.seeds,
        "durations": [item.duration for item in result.items],
        "model": result.model,
        "lora": result.metas.get("lora", []),
    }
    if result.metas.get("lm_model"):  # only when the LM ran
        summary |= {key: result.metas.get(key) for key in LM_RESULT_KEYS}
    content: list = [TextContent(type="text", text=json.dumps(summary))]
    for path in map(Path, result.audio_paths):
        blob = base64.b64encode(await anyio.Path(path).read_bytes()).decode()
        resource = BlobResourceContents(
            uri=path.resolve().as_uri(), mimeType=MEDIA_TYPES.get(path.suffix, "audio/wav"), blob=blob
        )
        content.append(EmbeddedResource(type="resource", resource=resource))
    return content


def _lm_of(backend: Backend) -> tuple[str | None, str] | None:
    """(the LM's name or None, why there is none) as the server knows it before any job; None for a
    backend that cannot tell (its worker then refuses the job with the same advice)."""
    if not hasattr(backend, "lm_name"):
        return None
    return backend.lm_name, getattr(backend, "lm_missing", "")


def _require_lm(backend: Backend, request: GenerationRequest) -> None:
    """Refuse an LM request on a server without an LM before it is queued, as the REST API does."""
    known = _lm_of(backend)
    if request.uses_lm and known is not None and known[0] is None:
        raise ToolError(
            f"thinking needs the 5Hz LM, and this server has none: {known[1]}; "
            "or leave thinking out to generate with the DiT alone"
        )


def _source(backend: Backend, audio_path: str | None, audio_base64: str | None) -> tuple[Path, list[Path]]:
    """The source audio: a server path inside the allowed directories, or uploaded as base64."""
    if bool(audio_path) == bool(audio_base64):
        raise ToolError("give exactly one of audio_path (a file on the server) or audio_base64")
    if audio_path:
        try:
            path = confine(audio_path, backend.input_roots, "audio_path")
        except UploadError as exc:
            raise ToolError(str(exc)) from None
        if not path.is_file():
            raise ToolError(f"audio_path: no such file {audio_path}")
        return path, []
    try:
        data = base64.b64decode(audio_base64, validate=True)
    except ValueError:
        raise ToolError("audio_base64 is not valid base64") from None
    if len(data) > backend.max_upload_bytes:
        raise ToolError(f"audio_base64 is over the {backend.max_upload_bytes // 2**20} MB upload limit")
    kind = sniff_audio(data[:12])
    if kind is None:
        raise ToolError("audio_base64 is not WAV, FLAC, MP3 or OGG audio")
    backend.uploads_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=backend.uploads_dir, suffix=f".{kind}", delete=False) as handle:
        handle.write(data)
    return Path(handle.name), [Path(handle.name)]


def build_server(backend: Backend, streamable_http_path: str = "/mcp") -> FastMCP:
    # The API key (checked in front of the HTTP app) is the protection; the Host check would
    # refuse clients that reach a container through its published port.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    server = FastMCP(
        "acestep",
        instructions="ACE-Step 1.5 music generation: songs from a caption, stems (lego) that fit a track.",
        streamable_http_path=streamable_http_path,
        stateless_http=True,
        transport_security=security,
    )

    @server.tool()
    async def generate_music(
        caption: str,
        lyrics: str = "",
        duration: float = 30.0,
        seed: int | None = None,
        batch_size: int = 1,
        audio_format: str = "wav",
        inference_steps: int | None = None,
        thinking: bool = False,
        use_cot_caption: bool | None = None,
        use_cot_language: bool | None = None,
        lora: list[str] | None = None,
        lora_scale: list[float] | float | None = None,
    ) -> list:
        """Generate music from a caption (and optional lyrics). Returns the files and their audio.

        ``thinking`` lets the 5 Hz LM plan the song first (bpm, key, time signature, duration, and
        the audio codes the DiT follows); ``use_cot_caption`` / ``use_cot_language`` (default true)
        let it replace the caption and the vocal language. The result then names ``lm_model`` and
        carries what the LM settled on. ``lora`` names adapters from ``list_loras`` (``["none"]``: no
        adapter even where the server has a default), ``lora_scale`` one scale or one per adapter."""
        request = _request(
            {
                "caption": caption,
                "lyrics": lyrics,
                "audio_duration": duration,
                "seed": seed,
                "batch_size": batch_size,
                "audio_format": audio_format,
                "inference_steps": inference_steps,
                "thinking": thinking,
                "use_cot_caption": use_cot_caption,
                "use_cot_language": use_cot_language,
                "lora": lora,
                "lora_scale": lora_scale,
            }
        )
        _require_lm(backend, request)
        return await _run(backend, request, [])

    @server.tool()
    async def lego_stem(
        track_type: str,
        bpm: int,
        audio_path: str | None = None,
        audio_base64: str | None = None,
        key_scale: str | None = None,
        caption: str | None = None,
        seed: int | None = None,
        batch_size: int = 1,
        audio_format: str = "wav",
        lora: list[str] | None = None,
        lora_scale: list[float] | float | None = None,
    ) -> list:
        """Generate a stem (e.g. vocals, drums) that fits the given track; as long as the track.
        ``lora``/``lora_scale``: adapters from ``list_loras`` (an XL base model needs its lego LoRA)."""
        track = track_type.strip().lower()
        if track not in TRACK_NAMES:
            raise ToolError(f"track_type must be one of {', '.join(TRACK_NAMES)}")
        source, cleanup = _source(backend, audio_path, audio_base64)
        try:
            seconds = sf.info(str(source)).duration
        except Exception as exc:  # soundfile raises several types
            for path in cleanup:
                path.unlink(missing_ok=True)
            raise ToolError(f"the source audio cannot be read: {exc}") from None
        request = _request(
            {
                "task_type": "lego",
                "track_name": track,
                "src_audio": str(source),
                "caption": caption or default_caption(track),
                "bpm": bpm,
                "key_scale": key_scale,
                "seed": seed,
                "batch_size": batch_size,
                "audio_format": audio_format,
                "audio_duration": seconds,
                "inference_steps": backend.default_steps,
                "lora": lora,
                "lora_scale": lora_scale,
            }
        )
        return await _run(backend, request, cleanup)

    @server.tool()
    async def get_status() -> dict:
        """Memory tier, limits, residency and the job queue's state."""
        status, stats = await anyio.to_thread.run_sync(
            lambda: (backend.manager.get_status(), backend.queue.stats())
        )
        return status | {"queue": stats}

    @server.tool()
    async def unload_model(level: str = "free") -> dict:
        """Unload the model after the running job: park (to CPU RAM) or free (GPU back to zero)."""
        if level not in ("park", "free"):
            raise ToolError("level must be park or free")
        return await anyio.to_thread.run_sync(backend.manager.unload, level)

    @server.tool()
    async def load_model() -> dict:
        """Load (or wake) the model now, so the next job starts at once."""
        return await anyio.to_thread.run_sync(backend.manager.load)

    @server.tool()
    async def list_loras() -> dict:
        """The LoRA adapters in the server's LoRA folder: name, base model, rank, whether they fit the
        served model; the unusable files with the reason; the default and what the model holds."""
        from acestep.lora.selection import resident

        catalog = await anyio.to_thread.run_sync(backend.queue.loras.catalog)
        status = await anyio.to_thread.run_sync(backend.manager.get_status)
        return catalog | {"resident": resident(status)}

    @server.tool()
    async def load_lora(name: str, scale: float = 1.0) -> dict:
        """Load an adapter into the model and make it the default (at ``scale``) for jobs that name
        no adapter."""
        from acestep.engine.request import MAX_LORA_SCALE
        from acestep.worker.runner import JobError

        if not 0.0 <= scale <= MAX_LORA_SCALE:
            raise ToolError(f"scale must be between 0 and {MAX_LORA_SCALE:g}")
        try:
            return await anyio.to_thread.run_sync(backend.queue.loras.load, backend.manager, name, scale)
        except (ValueError, JobError) as exc:
            raise ToolError(str(exc)) from None

    @server.tool()
    async def unload_lora(name: str | None = None) -> dict:
        """Remove an adapter (all without a name) from the model and from the default."""
        from acestep.worker.runner import JobError

        try:
            return await anyio.to_thread.run_sync(
                backend.queue.loras.unload, backend.manager, [name] if name else None
            )
        except (ValueError, JobError) as exc:
            raise ToolError(str(exc)) from None

    return server
