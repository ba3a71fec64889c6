"""What an MCP tool call hands in: its ``GenerationRequest`` and the audio it names or uploads.

Every bound is the request's (``acestep.request``): the argument types below carry its field
constraints into the tool schemas a client reads, and the request checks the rest. Audio comes as a
server path inside the allowed directories or as base64, staged in the uploads folder; its header is
checked against the REST API's input bounds before anything is queued.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Annotated, Any, Protocol

import anyio
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field, ValidationError

from acestep.engine.audio_limits import AudioInputError
from acestep.engine.audio_probe import checked_seconds
from acestep.engine.disk_full import NoSpaceError, is_no_space
from acestep.errors import shown, validation_message
from acestep.jobs.service import JobService, discard
from acestep.jobs.uploads import UploadError, confine, sniff_audio
from acestep.request import ADAPTER_NAME_RE, GenerationRequest
from acestep.request_edits import EditFields
from acestep.request_sampling import SamplerFields, one_of
from acestep.tasks import AUDIO_FORMATS, TRACK_NAMES


class Backend(Protocol):
    """What the tools need: the REST app's state, or a standalone server's own."""

    service: JobService  # the front door: queue, LM check, LoRA selection (``service.loras``)
    manager: object
    input_roots: list[Path]
    uploads_dir: Path
    max_upload_bytes: int
    default_steps: int


def request_arg(name: str) -> Any:
    """``GenerationRequest``'s field ``name`` as an optional tool argument: its type and bounds
    (in the tool's schema), None standing for the request's default."""
    info = GenerationRequest.model_fields[name]
    optional = info.annotation | None
    return Annotated[(optional, *info.metadata)] if info.metadata else optional


Steps = request_arg("inference_steps")
Guidance = request_arg("guidance_scale")
Shift = request_arg("shift")
BatchSize = Annotated[int, *GenerationRequest.model_fields["batch_size"].metadata]
AudioFormat = Annotated[str, Field(json_schema_extra=one_of(AUDIO_FORMATS))]
TrackName = Annotated[str, Field(json_schema_extra=one_of(TRACK_NAMES))]


def options(*groups: SamplerFields | EditFields | None) -> dict:
    """The sampler and edit options a call sent (only those it set, so defaults stay the request's)."""
    sent = [group.model_dump(exclude_unset=True) for group in groups if group is not None]
    return {name: value for values in sent for name, value in values.items()}


def build_request(values: dict) -> GenerationRequest:
    """The request of the values a call sent (None: not sent); a ToolError with the reason."""
    try:
        return GenerationRequest(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ToolError(validation_message(exc)) from None


def track(name: str, field: str = "track_type") -> str:
    """A track name, normalised; a ToolError naming the choices otherwise."""
    value = name.strip().lower()
    if value not in TRACK_NAMES:
        raise ToolError(f"{field} must be one of {', '.join(TRACK_NAMES)}; got {shown(name)}")
    return value


def adapter(name: str) -> str:
    """An adapter name as ``list_loras`` gives it (never a path); ``ValueError`` otherwise."""
    if not ADAPTER_NAME_RE.match(name.strip()):
        raise ValueError(f"name must be an adapter name from list_loras, got {shown(name)}")
    return name.strip()


def source(backend: Backend, audio_path: str | None, audio_base64: str | None) -> tuple[Path, list[Path]]:
    """The source audio (required): its path, and the staged upload to delete when the job ends."""
    if bool(audio_path) == bool(audio_base64):
        raise ToolError("give exactly one of audio_path (a file on the server) or audio_base64")
    return stage(backend, audio_path, audio_base64, "audio")


def stage(
    backend: Backend, path: str | None, data_base64: str | None, prefix: str
) -> tuple[Path, list[Path]]:
    """One audio input: a server path inside the allowed directories, or base64 written to the
    uploads folder (then listed for deletion). ``prefix``: the arguments' names (``audio``,
    ``reference_audio``) for the messages."""
    if path:
        try:
            found = confine(path, backend.input_roots, f"{prefix}_path")
        except UploadError as exc:
            raise ToolError(str(exc)) from None
        if not found.is_file():
            raise ToolError(f"{prefix}_path: no such file {path}")
        return found, []
    field = f"{prefix}_base64"
    try:
        data = base64.b64decode(data_base64 or "", validate=True)
    except ValueError:
        raise ToolError(f"{field} is not valid base64") from None
    if len(data) > backend.max_upload_bytes:
        raise ToolError(f"{field} is over the {backend.max_upload_bytes // 2**20} MB upload limit")
    kind = sniff_audio(data[:12])
    if kind is None:
        raise ToolError(f"{field} is not WAV, FLAC, MP3 or OGG audio")
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


async def audio_seconds(
    path: Path, field: str, role: str = "source", min_seconds: float | None = None
) -> float:
    """The length of an input (``role``: source or reference), once its header (read in a bounded
    child) is within the REST API's input bounds; a ToolError naming the bound otherwise."""
    try:
        return await anyio.to_thread.run_sync(checked_seconds, path, field, min_seconds)
    except AudioInputError as exc:
        raise ToolError(f"the {role} audio cannot be used: {exc}") from None
