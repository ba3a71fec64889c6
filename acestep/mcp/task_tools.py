"""The MCP tools for the track tasks on a source (docs/tasks.md): ``lego_stem`` (a new stem that
fits the track), ``extract_stem`` (one stem taken out of the mix) and ``complete_track`` (a full
arrangement around the source). Each stages and checks its source as ``edit_audio`` does and queues
through ``follow.run``. Whether the served model runs the task is the queue's check: its reason
(e.g. "extract needs a base or SFT model") comes back as the tool error.
"""

from __future__ import annotations

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError

from acestep.jobs.outputs import DEFAULT_AUDIO_FORMAT
from acestep.jobs.service import discard
from acestep.mcp.delivery import Delivery, embed_budget
from acestep.mcp.follow import run
from acestep.mcp.inputs import (
    AudioFormat,
    Backend,
    BatchSize,
    Steps,
    TrackName,
    audio_seconds,
    build_request,
    options,
    source,
    track,
)
from acestep.request import GenerationRequest
from acestep.request_edits import EditFields
from acestep.request_sampling import SamplerFields
from acestep.tasks import TRACK_NAMES, default_caption


async def _source_request(
    backend: Backend, audio_path: str | None, audio_base64: str | None, values: dict, length: bool = False
) -> tuple[GenerationRequest, list]:
    """The request on the staged, checked source (``length``: as long as the source); refused,
    the staged upload is removed (queued, the job's end removes it)."""
    staged, cleanup = source(backend, audio_path, audio_base64)
    try:
        field = "audio_path" if audio_path else "audio_base64"
        seconds = await audio_seconds(staged, field)
        length_value = {"audio_duration": seconds} if length else {}
        steps = values.get("inference_steps") or backend.default_steps
        request = build_request(values | length_value | {"src_audio": str(staged), "inference_steps": steps})
    except BaseException:
        discard(cleanup)
        raise
    return request, cleanup


def add_source_tools(server: FastMCP, backend: Backend) -> None:
    @server.tool()
    async def lego_stem(
        track_type: TrackName,
        bpm: int,
        audio_path: str | None = None,
        audio_base64: str | None = None,
        key_scale: str | None = None,
        caption: str | None = None,
        seed: int | None = None,
        batch_size: BatchSize = 1,
        audio_format: AudioFormat = DEFAULT_AUDIO_FORMAT,
        inference_steps: Steps = None,
        lora: list[str] | None = None,
        lora_scale: list[float] | float | None = None,
        sampling: SamplerFields | None = None,
        edits: EditFields | None = None,
        wait: bool = True,
        ctx: Context | None = None,
    ) -> list:
        """Generate a stem (e.g. vocals, drums) that fits the given track; as long as the track.
        ``lora``/``lora_scale``: adapters from ``list_loras`` (an XL base model needs its lego LoRA).
        ``sampling``: sampler options as for generate_music; ``edits``: the repaint join options and
        ``global_caption`` (the whole song, for stem checkpoints). ``inference_steps``: the
        model's default unless set. ``wait`` false: return ``task_id`` at once (``job_status``)."""
        name = track(track_type)
        values = {
            "task_type": "lego",
            "track_name": name,
            "caption": caption or default_caption(name),
            "bpm": bpm,
            "key_scale": key_scale,
            "seed": seed,
            "batch_size": batch_size,
            "audio_format": audio_format,
            "inference_steps": inference_steps,
            "lora": lora,
            "lora_scale": lora_scale,
        } | options(sampling, edits)
        request, cleanup = await _source_request(backend, audio_path, audio_base64, values, length=True)
        return await run(backend, request, cleanup, Delivery(embed_budget(), ctx), wait)

    @server.tool()
    async def extract_stem(
        track_type: TrackName,
        audio_path: str | None = None,
        audio_base64: str | None = None,
        caption: str = "",
        seed: int | None = None,
        batch_size: BatchSize = 1,
        audio_format: AudioFormat = DEFAULT_AUDIO_FORMAT,
        inference_steps: Steps = None,
        lora: list[str] | None = None,
        lora_scale: list[float] | float | None = None,
        sampling: SamplerFields | None = None,
        wait: bool = True,
        ctx: Context | None = None,
    ) -> list:
        """Take one stem (``track_type``, e.g. drums) out of a mix (``audio_path``, a server file
        inside the allowed directories, or ``audio_base64``); as long as the source. Base and SFT
        models. ``sampling``, ``lora``, ``wait``: as for generate_music."""
        values = {
            "task_type": "extract",
            "track_name": track(track_type),
            "caption": caption,
            "seed": seed,
            "batch_size": batch_size,
            "audio_format": audio_format,
            "inference_steps": inference_steps,
            "lora": lora,
            "lora_scale": lora_scale,
        } | options(sampling)
        request, cleanup = await _source_request(backend, audio_path, audio_base64, values)
        return await run(backend, request, cleanup, Delivery(embed_budget(), ctx), wait)

    @server.tool()
    async def complete_track(
        track_classes: list[TrackName],
        caption: str,
        audio_path: str | None = None,
        audio_base64: str | None = None,
        lyrics: str = "",
        bpm: int | None = None,
        key_scale: str | None = None,
        seed: int | None = None,
        batch_size: BatchSize = 1,
        audio_format: AudioFormat = DEFAULT_AUDIO_FORMAT,
        inference_steps: Steps = None,
        lora: list[str] | None = None,
        lora_scale: list[float] | float | None = None,
        sampling: SamplerFields | None = None,
        wait: bool = True,
        ctx: Context | None = None,
    ) -> list:
        """Build a full mix around the source (e.g. a solo vocal or guitar): ``track_classes``, the
        tracks to add (e.g. ["drums", "bass", "keyboard"]), and ``caption``, the arrangement. As
        long as the source; the source is the model's context, not copied into the result. Base
        and SFT models. ``sampling``, ``lora``, ``wait``: as for generate_music."""
        if not track_classes:
            raise ToolError(f"track_classes: name at least one of {', '.join(TRACK_NAMES)}")
        values = {
            "task_type": "complete",
            "track_classes": [track(name, "track_classes") for name in track_classes],
            "caption": caption,
            "lyrics": lyrics,
            "bpm": bpm,
            "key_scale": key_scale,
            "seed": seed,
            "batch_size": batch_size,
            "audio_format": audio_format,
            "inference_steps": inference_steps,
            "lora": lora,
            "lora_scale": lora_scale,
        } | options(sampling)
        request, cleanup = await _source_request(backend, audio_path, audio_base64, values)
        return await run(backend, request, cleanup, Delivery(embed_budget(), ctx), wait)
