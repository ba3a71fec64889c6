"""The MCP tool ``edit_audio``: cover, cover-nofsq, repaint and flow edit of a source the client
names or uploads, with every sampler and edit field (docs/generation.md). It stages and checks the
source as ``lego_stem`` does and queues through the same service (``acestep.mcp.tools``).
"""

from __future__ import annotations

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError

from acestep.engine.audio_limits import AudioInputError, shortest_source
from acestep.engine.audio_probe import checked_seconds
from acestep.errors import shown
from acestep.jobs.service import discard
from acestep.mcp.tools import Backend, Delivery, _options, _request, _run, _source
from acestep.request_edits import REPAINT_TASKS, EditFields
from acestep.request_sampling import SamplerFields
from acestep.tasks import COVER_TASKS, FLOW_EDIT_TASKS, SOURCE_TASKS

# The tasks that change a source into a song of its length. Lego has its own tool (lego_stem);
# extract and complete need track names this tool does not take.
SOURCE_EDITS = (*sorted(COVER_TASKS), *sorted(REPAINT_TASKS))
# Tasks that read a source only as a flow edit (text2music): refused here without one, since
# generate_music is the tool for a new song.
FLOW_EDIT_ONLY = tuple(sorted(FLOW_EDIT_TASKS - SOURCE_TASKS))
FLOW_EDIT_CHOICE = f"{' / '.join(FLOW_EDIT_ONLY)} with edits.flow_edit_morph true (a flow edit)"
CHOICES = f"{', '.join(SOURCE_EDITS)}, or {FLOW_EDIT_CHOICE}"


def edit_task(task_type: str, edits: EditFields | None) -> str:
    """The task, normalised, if this tool runs it; a ToolError naming the choices otherwise."""
    task = task_type.strip().lower()
    flow_edit = edits is not None and edits.flow_edit_morph
    if task in SOURCE_EDITS or (task in FLOW_EDIT_ONLY and flow_edit):
        return task
    hint = ""
    if task in FLOW_EDIT_ONLY:
        hint = " (a new song from a caption: generate_music)"
    elif task == "lego":
        hint = " (a stem: lego_stem)"
    raise ToolError(f"task_type must be one of {CHOICES}; got {shown(task_type)}{hint}")


def add_edit_tool(server: FastMCP, backend: Backend, embed_bytes: int) -> None:
    @server.tool()
    async def edit_audio(
        task_type: str,
        audio_path: str | None = None,
        audio_base64: str | None = None,
        caption: str = "",
        lyrics: str = "",
        repainting_start: float | None = None,
        repainting_end: float | None = None,
        audio_cover_strength: float | None = None,
        seed: int | None = None,
        batch_size: int = 1,
        audio_format: str = "wav",
        inference_steps: int | None = None,
        lora: list[str] | None = None,
        lora_scale: list[float] | float | None = None,
        sampling: SamplerFields | None = None,
        edits: EditFields | None = None,
        ctx: Context | None = None,
    ) -> list:
        """Change existing audio (``audio_path``, a server file inside the allowed directories, or
        ``audio_base64``) toward ``caption`` and ``lyrics``; the result is as long as the source.
        ``task_type``: ``cover`` or ``cover-nofsq`` (a new rendition; ``audio_cover_strength`` is
        the share of steps that follow the source), ``repaint`` (regenerates
        ``repainting_start``..``repainting_end`` seconds, -1 for the end, and keeps the rest), or
        ``text2music`` with ``edits.flow_edit_morph`` true (a flow edit, base and SFT models only).
        ``edits``: ``repaint_mode``, ``repaint_strength``, ``cover_noise_strength``,
        ``chunk_mask_mode``, ``flow_edit_morph`` with ``flow_edit_source_caption``/``_lyrics`` and
        its window (flow edit also works on cover and cover-nofsq); ``sampling``: the sampler
        options as for generate_music; ``lora``/``lora_scale`` as for generate_music. Every option
        is described in docs/generation.md, its bounds in docs/api.md."""
        task = edit_task(task_type, edits)
        source, cleanup = _source(backend, audio_path, audio_base64)
        # Until the job is queued, any refusal removes the staged upload (then the job's end does).
        try:
            request = _request(
                {
                    "task_type": task,
                    "src_audio": str(source),
                    "caption": caption,
                    "lyrics": lyrics,
                    "repainting_start": repainting_start,
                    "repainting_end": repainting_end,
                    "audio_cover_strength": audio_cover_strength,
                    "seed": seed,
                    "batch_size": batch_size,
                    "audio_format": audio_format,
                    "inference_steps": backend.default_steps if inference_steps is None else inference_steps,
                    "lora": lora,
                    "lora_scale": lora_scale,
                }
                | _options(sampling, edits)
            )
            # The header, read in a bounded child, against the REST API's input bounds (a repaint
            # window past the end pads a short source, as on REST).
            field = "audio_path" if audio_path else "audio_base64"
            shortest = shortest_source(request.task_type, request.repainting_end)
            try:
                await anyio.to_thread.run_sync(checked_seconds, source, field, shortest)
            except AudioInputError as exc:
                raise ToolError(f"the source audio cannot be used: {exc}") from None
        except BaseException:
            discard(cleanup)
            raise
        return await _run(backend, request, cleanup, Delivery(embed_bytes, ctx))
