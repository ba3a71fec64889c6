"""MCP tools over the same job queue and memory manager as the REST API.

``generate_music``, ``lego_stem``, ``edit_audio`` (edit_tool.py), ``get_status``, ``unload_model``,
``load_model``, for LoRA adapters ``list_loras``, ``load_lora`` and ``unload_lora``, and with
``ACESTEP_TRAINING=on`` the training tools (training_tools.py). Results come
back as file paths (in the JSON summary) and as embedded audio resources, so a client on another
host gets the audio itself, while they fit ``ACESTEP_MCP_EMBED_MB``; past it, as links (the REST
app's ``/v1/audio`` over HTTP, the file over stdio). Tools queue work and wait for it; they never
touch the GPU.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Protocol

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import BlobResourceContents, EmbeddedResource, ResourceLink, TextContent
from pydantic import ValidationError

from acestep.engine.audio_limits import AudioInputError
from acestep.engine.audio_probe import checked_seconds
from acestep.engine.disk_full import NoSpaceError, is_no_space
from acestep.errors import shown, validation_message
from acestep.jobs.failures import Refusal, command_refusal
from acestep.jobs.outputs import MEDIA_TYPES, audio_url
from acestep.jobs.service import JobService, discard
from acestep.jobs.uploads import UploadError, confine, sniff_audio
from acestep.jobs.waits import CommandTimeout, run_command
from acestep.request import ADAPTER_NAME_RE, GenerationRequest
from acestep.request_edits import EditFields
from acestep.request_sampling import SamplerFields
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.tasks import TRACK_NAMES, default_caption

TIMEOUT_S = 600.0
# Audio embedded in one tool result, in MiB; past it, links (0: links only). The API process
# briefly holds several copies of what it embeds (bytes, base64, the JSON message): about 8x.
EMBED_ENV = "ACESTEP_MCP_EMBED_MB"
# What a result says about the LM's plan: the model, what it wrote, the values the DiT then used
# and each item's audio codes.
LM_RESULT_KEYS = (
    "lm_model", "lm_metas", "bpm", "key_scale", "time_signature", "duration", "caption",
    "vocal_language", "audio_codes",
)  # fmt: skip


class Backend(Protocol):
    """What the tools need: the REST app's state, or a standalone server's own."""

    service: JobService  # the front door: queue, LM check, LoRA selection (``service.loras``)
    manager: object
    input_roots: list[Path]
    uploads_dir: Path
    max_upload_bytes: int
    default_steps: int


def _options(*groups: SamplerFields | EditFields | None) -> dict:
    """The sampler and edit options a call sent (only those it set, so defaults stay the request's)."""
    sent = [group.model_dump(exclude_unset=True) for group in groups if group is not None]
    return {name: value for values in sent for name, value in values.items()}


def _request(values: dict) -> GenerationRequest:
    try:
        return GenerationRequest(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ToolError(validation_message(exc)) from None


async def _run(backend: Backend, request: GenerationRequest, cleanup: list[Path], delivery: Delivery) -> list:
    """Queue through the service and wait; a refusal or a failure is a tool error with the reason
    REST and the UI give (acestep/jobs/failures.py). Refused, the uploads are deleted."""
    service = backend.service
    try:
        job = await service.submit(request, cleanup)
        job = await _follow(service, job, delivery.ctx)
    except Refusal as exc:
        raise ToolError(exc.reason) from None
    result = job.result
    audio, embedded = await delivery.audio(result.audio_paths)
    summary = {
        "task_id": job.id,
        "files": result.audio_paths,
        "seeds": result.seeds,
        "durations": [item.duration for item in result.items],
        "model": result.model,
        "lora": result.metas.get("lora", []),
        "embedded": embedded,  # per file: its audio is in this result, else a link to it
        "warnings": result.warnings,  # what the request asked that changed nothing, and other notes
    }
    if delivery.base_url is not None:
        summary["urls"] = [audio_url(path) for path in result.audio_paths]
    if result.metas.get("lm_model"):  # only when the LM ran
        summary |= {key: result.metas.get(key) for key in LM_RESULT_KEYS}
    return [TextContent(type="text", text=json.dumps(summary)), *audio]


async def _follow(service: JobService, job, ctx: Context | None):
    """Wait for the job (``JobService.await_job``), and send its overall fraction and stage to a
    client that asked for progress (an MCP progress token). The fraction never goes down
    (acestep/worker/progress.py), which MCP requires of progress notifications."""
    last, sent = job, -1.0
    async for last in service.watch(job, TIMEOUT_S):  # noqa: B007 (the last one is the ended job)
        if ctx is not None and last.progress > sent:
            sent = last.progress
            await ctx.report_progress(sent, 1.0, message=last.stage)
    return service.outcome(last)


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


def _adapter(name: str) -> str:
    """An adapter name as ``list_loras`` gives it (never a path); ``ValueError`` otherwise."""
    if not ADAPTER_NAME_RE.match(name.strip()):
        raise ValueError(f"name must be an adapter name from list_loras, got {shown(name)}")
    return name.strip()


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
    staged: Path | None = None
    try:
        backend.uploads_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=backend.uploads_dir, suffix=f".{kind}", delete=False) as handle:
            staged = Path(handle.name)
            handle.write(data)  # a full disk may surface here or at the flush on close
    except BaseException as exc:  # no partial file stays behind
        if staged is not None:
            discard([staged])
        if is_no_space(exc):
            raise ToolError(str(NoSpaceError(backend.uploads_dir))) from None
        raise
    return staged, [staged]


def build_server(
    backend: Backend,
    streamable_http_path: str = "/mcp",
    security: TransportSecuritySettings | None = None,
    training: bool = False,
) -> FastMCP:
    """``security``: the SDK's Host/Origin checks for HTTP (the REST app passes its own); off by
    default, for stdio, which has no Host. ``training``: add the training tools
    (``ACESTEP_TRAINING=on``)."""
    from acestep.mcp.edit_tool import add_edit_tool  # here: that module imports this one's helpers

    security = security or TransportSecuritySettings(enable_dns_rebinding_protection=False)
    embed_bytes = setting_value(current_settings(), EMBED_ENV) * 2**20
    server = FastMCP(
        "acestep",
        instructions=(
            "ACE-Step 1.5 music generation: songs from a caption, stems (lego) that fit a track, "
            "covers, repaints and flow edits of existing audio."
        ),
        streamable_http_path=streamable_http_path,
        stateless_http=True,
        transport_security=security,
    )

    _add_song_tool(server, backend, embed_bytes)
    _add_lego_tool(server, backend, embed_bytes)
    add_edit_tool(server, backend, embed_bytes)
    _add_model_tools(server, backend)
    if training:
        from acestep.mcp.training_tools import add_training_tools

        add_training_tools(server, backend)
    return server


def _add_song_tool(server: FastMCP, backend: Backend, embed_bytes: int) -> None:
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
        sampling: SamplerFields | None = None,
        ctx: Context | None = None,
    ) -> list:
        """Generate music from a caption (and optional lyrics). Returns the files and their audio.
        ``sampling``: the sampler, guidance, DCW, retake and output-shaping options (docs/api.md).

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
            | _options(sampling)
        )
        return await _run(backend, request, [], Delivery(embed_bytes, ctx))


def _add_lego_tool(server: FastMCP, backend: Backend, embed_bytes: int) -> None:
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
        sampling: SamplerFields | None = None,
        edits: EditFields | None = None,
        ctx: Context | None = None,
    ) -> list:
        """Generate a stem (e.g. vocals, drums) that fits the given track; as long as the track.
        ``lora``/``lora_scale``: adapters from ``list_loras`` (an XL base model needs its lego LoRA).
        ``sampling``: sampler options as for generate_music; ``edits``: the repaint join options and
        ``global_caption`` (the whole song, for stem checkpoints)."""
        track = track_type.strip().lower()
        if track not in TRACK_NAMES:
            raise ToolError(f"track_type must be one of {', '.join(TRACK_NAMES)}")
        source, cleanup = _source(backend, audio_path, audio_base64)
        # Until the job is queued, any refusal removes the staged upload (then the job's end does).
        try:
            try:  # the header, read in a bounded child, against the REST API's input bounds
                field = "audio_path" if audio_path else "audio_base64"
                seconds = await anyio.to_thread.run_sync(checked_seconds, source, field)
            except AudioInputError as exc:
                raise ToolError(f"the source audio cannot be used: {exc}") from None
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
                | _options(sampling, edits)
            )
        except BaseException:
            discard(cleanup)
            raise
        return await _run(backend, request, cleanup, Delivery(embed_bytes, ctx))


def _add_model_tools(server: FastMCP, backend: Backend) -> None:
    """Status, load/unload and the LoRA commands."""

    @server.tool()
    async def get_status() -> dict:
        """Memory tier, limits, residency and the job queue's state."""
        status, stats = await anyio.to_thread.run_sync(
            lambda: (backend.manager.get_status(), backend.service.queue.stats())
        )
        return status | {"queue": stats}

    @server.tool()
    async def unload_model(level: str = "free") -> dict:
        """Unload the model after the running job: park (to CPU RAM) or free (GPU back to zero)."""
        from acestep.worker.dispatcher import BusyError

        if level not in ("park", "free"):
            raise ToolError("level must be park or free")
        try:
            return await run_command(backend.manager.unload, level)
        except (BusyError, CommandTimeout) as exc:
            raise ToolError(command_refusal(exc).reason) from None

    @server.tool()
    async def load_model() -> dict:
        """Load (or wake) the model now, so the next job starts at once."""
        try:
            return await run_command(backend.manager.load)
        except CommandTimeout as exc:
            raise ToolError(command_refusal(exc).reason) from None

    @server.tool()
    async def list_loras() -> dict:
        """The LoRA adapters in the server's LoRA folder: name, base model, rank, whether they fit the
        served model; the unusable files with the reason; the default and what the model holds."""
        from acestep.lora.selection import resident

        catalog = await anyio.to_thread.run_sync(backend.service.loras.catalog)
        status = await anyio.to_thread.run_sync(backend.manager.get_status)
        return catalog | {"resident": resident(status)}

    @server.tool()
    async def load_lora(name: str, scale: float = 1.0) -> dict:
        """Load an adapter into the model and make it the default (at ``scale``) for jobs that name
        no adapter."""
        from acestep.errors import JobError
        from acestep.request import MAX_LORA_SCALE

        if not 0.0 <= scale <= MAX_LORA_SCALE:
            raise ToolError(f"scale must be between 0 and {MAX_LORA_SCALE:g}")
        try:
            return await run_command(backend.service.loras.load, backend.manager, _adapter(name), scale)
        except (ValueError, JobError, CommandTimeout) as exc:
            raise ToolError(command_refusal(exc).reason) from None

    @server.tool()
    async def unload_lora(name: str | None = None) -> dict:
        """Remove an adapter (all without a name) from the model and from the default."""
        from acestep.errors import JobError

        try:
            names = [_adapter(name)] if name else None
            return await run_command(backend.service.loras.unload, backend.manager, names)
        except (ValueError, JobError, CommandTimeout) as exc:
            raise ToolError(command_refusal(exc).reason) from None
