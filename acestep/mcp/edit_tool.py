"""The MCP tool ``edit_audio``: cover, cover-nofsq, repaint and flow edit of a source the client
names or uploads, with every sampler and edit field (docs/generation.md). It stages and checks the
source as ``lego_stem`` does and queues through ``follow.run`` (a wait with progress, or ``wait``
false for ``job_status``).
"""

from __future__ import annotations

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError

from acestep.engine.audio_limits import shortest_source
from acestep.errors import shown
from acestep.jobs.outputs import DEFAULT_AUDIO_FORMAT
from acestep.jobs.service import discard
from acestep.mcp.delivery import Delivery, embed_budget
from acestep.mcp.follow import run
from acestep.mcp.inputs import (
    AudioFormat,
    Backend,
    BatchSize,
    Steps,
    audio_seconds,
    build_request,
    options,
    source,
)
from acestep.request_edits import REPAINT_TASKS, EditFields
from acestep.request_sampling import SamplerFields
from acestep.tasks import COVER_TASKS, FLOW_EDIT_TASKS, SOURCE_TASKS

# The tasks that change a source into a song of its length. The track tasks (lego, extract,
# complete) have their own tools (task_tools.py): they take track names this tool does not.
SOURCE_EDITS = (*sorted(COVER_TASKS), *sorted(REPAINT_TASKS))
# Tasks that read a source only as a flow edit (text2music): refused here without one, since
# generate_music is the tool for a new song.
FLOW_EDIT_ONLY = tuple(sorted(FLOW_EDIT_TASKS - SOURCE_TASKS))
FLOW_EDIT_CHOICE = f"{' / '.join(FLOW_EDIT_ONLY)} with edits.flow_edit_morph true (a flow edit)"
CHOICES = f"{', '.join(SOURCE_EDITS)}, or {FLOW_EDIT_CHOICE}"
TRACK_TOOLS = {"lego": "lego_stem", "extract": "extract_stem", "complete": "complete_track"}


def edit_task(task_type: str, edits: EditFields | None) -> str:
    """The task, normalised, if this tool runs it; a ToolError naming the choices otherwise."""
    task = task_type.strip().lower()
    flow_edit = edits is not None and edits.flow_edit_morph
    if task in SOURCE_EDITS or (task in FLOW_EDIT_ONLY and flow_edit):
        return task
    hint = ""
    if task in FLOW_EDIT_ONLY:
        hint = " (a new song from a caption: generate_music)"
    elif task in TRACK_TOOLS:
        hint = f" (this task: {TRACK_TOOLS[task]})"
    raise ToolError(f"task_type must be one of {CHOICES}; got {shown(task_type)}{hint}")


def add_edit_tool(server: FastMCP, backend: Backend) -> None:
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
        is described in docs/generation.md, its bounds in docs/api.md. ``wait`` false: return
        ``task_id`` at once (``job_status``)."""
        task = edit_task(task_type, edits)
        staged, cleanup = source(backend, audio_path, audio_base64)
        # Until the job is queued, any refusal removes the staged upload (then the job's end does).
        try:
            request = build_request(
                {
                    "task_type": task,
                    "src_audio": str(staged),
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
                | options(sampling, edits)
            )
            # The header, read in a bounded child, against the REST API's input bounds (a repaint
            # window past the end pads a short source, as on REST).
            field = "audio_path" if audio_path else "audio_base64"
            shortest = shortest_source(request.task_type, request.repainting_end)
            await audio_seconds(staged, field, "source", shortest)
        except BaseException:
            discard(cleanup)
            raise
        return await run(backend, request, cleanup, Delivery(embed_budget(), ctx), wait)
