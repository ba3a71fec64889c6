"""MCP tools over the same job queue and memory manager as the REST API.

Task tools: ``generate_music`` (here), ``lego_stem``, ``extract_stem``, ``complete_track``
(task_tools.py) and ``edit_audio`` (edit_tool.py); each one waits for its job with progress
notifications, or with ``wait`` false returns at once for ``job_status`` / ``cancel_job``
(follow.py). Results come back as described in delivery.py: a summary, then each file embedded
while it fits ``ACESTEP_MCP_EMBED_MB``, else a link. Also ``get_status``, ``unload_model``,
``load_model``, for LoRA adapters ``list_loras``, ``load_lora`` and ``unload_lora``, and with
``ACESTEP_TRAINING=on`` the training tools (training_tools.py). Tools queue work; they never touch
the GPU.
"""

from __future__ import annotations

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings

from acestep.jobs.failures import command_refusal
from acestep.jobs.outputs import DEFAULT_AUDIO_FORMAT
from acestep.jobs.service import discard
from acestep.jobs.waits import CommandTimeout, run_command
from acestep.mcp.delivery import Delivery, embed_budget
from acestep.mcp.follow import add_job_tools, run
from acestep.mcp.inputs import (
    AudioFormat,
    Backend,
    BatchSize,
    Guidance,
    Shift,
    Steps,
    adapter,
    audio_seconds,
    build_request,
    options,
    stage,
)
from acestep.request_sampling import SamplerFields


def build_server(
    backend: Backend,
    streamable_http_path: str = "/mcp",
    security: TransportSecuritySettings | None = None,
    training: bool = False,
) -> FastMCP:
    """``security``: the SDK's Host/Origin checks for HTTP (the REST app passes its own); off by
    default, for stdio, which has no Host. ``training``: add the training tools
    (``ACESTEP_TRAINING=on``)."""
    from acestep.mcp.edit_tool import add_edit_tool
    from acestep.mcp.task_tools import add_source_tools

    security = security or TransportSecuritySettings(enable_dns_rebinding_protection=False)
    server = FastMCP(
        "acestep",
        instructions=(
            "ACE-Step 1.5 music generation: songs from a caption, stems (lego) that fit a track, "
            "stems extracted from a mix, arrangements completed around a track, covers, repaints "
            "and flow edits of existing audio. Task tools wait and send progress; with wait=false "
            "they return a task_id at once, for job_status and cancel_job."
        ),
        streamable_http_path=streamable_http_path,
        stateless_http=True,
        transport_security=security,
    )

    _add_song_tool(server, backend)
    add_source_tools(server, backend)
    add_edit_tool(server, backend)
    add_job_tools(server, backend)
    _add_model_tools(server, backend)
    if training:
        from acestep.mcp.training_tools import add_training_tools

        add_training_tools(server, backend)
    return server


def _add_song_tool(server: FastMCP, backend: Backend) -> None:
    @server.tool()
    async def generate_music(
        caption: str,
        lyrics: str = "",
        duration: float = 30.0,
        instrumental: bool | None = None,
        bpm: int | None = None,
        key_scale: str | None = None,
        time_signature: str | None = None,
        vocal_language: str | None = None,
        seed: int | None = None,
        batch_size: BatchSize = 1,
        audio_format: AudioFormat = DEFAULT_AUDIO_FORMAT,
        inference_steps: Steps = None,
        guidance_scale: Guidance = None,
        shift: Shift = None,
        reference_audio_path: str | None = None,
        reference_audio_base64: str | None = None,
        audio_codes: str | None = None,
        thinking: bool = False,
        use_cot_caption: bool | None = None,
        use_cot_language: bool | None = None,
        lora: list[str] | None = None,
        lora_scale: list[float] | float | None = None,
        sampling: SamplerFields | None = None,
        wait: bool = True,
        ctx: Context | None = None,
    ) -> list:
        """Generate music from a caption (and optional lyrics). Returns the files and their audio.
        ``bpm``, ``key_scale`` (e.g. "A minor"), ``time_signature`` (2, 3, 4 or 6),
        ``vocal_language`` (e.g. "en") and ``instrumental`` steer the song; unset ones are left to
        the model (or to the LM with ``thinking``). ``reference_audio_path`` (a server file inside
        the allowed directories) or ``reference_audio_base64``: a song whose timbre to follow.
        ``audio_codes``: the 5 Hz LM's codes (as a result with the LM returns them) for the DiT to
        follow. ``sampling``: the sampler, guidance, DCW, retake and output-shaping options
        (docs/api.md); unset values are the request's defaults.

        ``thinking`` lets the 5 Hz LM plan the song first (bpm, key, time signature, duration, and
        the audio codes the DiT follows); ``use_cot_caption`` / ``use_cot_language`` (default true)
        let it replace the caption and the vocal language. The result then names ``lm_model`` and
        carries what the LM settled on. ``lora`` names adapters from ``list_loras`` (``["none"]``: no
        adapter even where the server has a default), ``lora_scale`` one scale or one per adapter.
        ``wait`` false: return ``task_id`` at once; follow it with ``job_status``."""
        if reference_audio_path and reference_audio_base64:
            raise ToolError("give at most one of reference_audio_path or reference_audio_base64")
        reference, cleanup = None, []
        if reference_audio_path or reference_audio_base64:
            reference, cleanup = stage(
                backend, reference_audio_path, reference_audio_base64, "reference_audio"
            )
        # Until the job is queued, any refusal removes the staged upload (then the job's end does).
        try:
            if reference is not None:
                await audio_seconds(
                    reference,
                    "reference_audio_path" if reference_audio_path else "reference_audio_base64",
                    "reference",
                )
            request = build_request(
                {
                    "caption": caption,
                    "lyrics": lyrics,
                    "audio_duration": duration,
                    "instrumental": instrumental,
                    "bpm": bpm,
                    "key_scale": key_scale,
                    "time_signature": time_signature,
                    "vocal_language": vocal_language,
                    "seed": seed,
                    "batch_size": batch_size,
                    "audio_format": audio_format,
                    "inference_steps": inference_steps,
                    "guidance_scale": guidance_scale,
                    "shift": shift,
                    "reference_audio": str(reference) if reference is not None else None,
                    "audio_code_string": audio_codes,
                    "thinking": thinking,
                    "use_cot_caption": use_cot_caption,
                    "use_cot_language": use_cot_language,
                    "lora": lora,
                    "lora_scale": lora_scale,
                }
                | options(sampling)
            )
        except BaseException:
            discard(cleanup)
            raise
        return await run(backend, request, cleanup, Delivery(embed_budget(), ctx), wait)


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
            return await run_command(backend.service.loras.load, backend.manager, adapter(name), scale)
        except (ValueError, JobError, CommandTimeout) as exc:
            raise ToolError(command_refusal(exc).reason) from None

    @server.tool()
    async def unload_lora(name: str | None = None) -> dict:
        """Remove an adapter (all without a name) from the model and from the default."""
        from acestep.errors import JobError

        try:
            names = [adapter(name)] if name else None
            return await run_command(backend.service.loras.unload, backend.manager, names)
        except (ValueError, JobError, CommandTimeout) as exc:
            raise ToolError(command_refusal(exc).reason) from None
