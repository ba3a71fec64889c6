"""A REST request's audio inputs: uploads saved, server paths confined, and each one checked only
when the task reads it.

Upstream's clients send a source whatever the task (a DAW uploads a 0.1 s silent ``src_audio`` with
every text2music job), so a source the task does not read is neither probed nor decoded: it is
dropped from the request, deleted with the job's other uploads, and named in the job's warnings.
Every message names the field the client sent, not a canonical alias (docs/api.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from acestep.engine.audio_limits import shortest_source
from acestep.errors import JobErrorKind
from acestep.fields import BY_NAME
from acestep.jobs.failures import RefusalCause
from acestep.jobs.uploads import UploadError, confine, copy_shared, save_upload
from acestep.request import GenerationRequest
from acestep.tasks import SOURCE_TASKS, source_used

# GenerationRequest field -> the multipart names an upload may come under (upstream's order).
UPLOAD_FIELDS = {
    "src_audio": ("ctx_audio", "src_audio"),
    "reference_audio": ("ref_audio", "reference_audio"),
}
# GenerationRequest field -> the field-table entry of its server-path form.
PATH_SPECS = {"src_audio": "src_audio_path", "reference_audio": "reference_audio_path"}


@dataclass
class Inputs:
    """The audio a request named: files saved here (deleted with the job), and the name the client
    sent for each GenerationRequest field."""

    saved: list[Path] = field(default_factory=list)
    sent: dict[str, str] = field(default_factory=dict)
    uploaded: set[str] = field(default_factory=set)


def sent_name(raw: Mapping[str, Any], spec_name: str) -> str:
    """The key the client used for a field (top level or ``param_obj``), else the canonical name."""
    names = BY_NAME[spec_name].names
    nested = raw.get("param_obj")
    for place in (raw, nested if isinstance(nested, Mapping) else {}):
        for name in names:
            if name in place:
                return name
    return spec_name


async def take_inputs(
    inputs: Inputs, config: Any, values: dict, files: Mapping[str, Any], raw: Mapping[str, Any]
) -> None:
    """Save the uploads and confine the named server paths into ``values``; nothing is read yet.
    On a refusal the caller deletes ``inputs.saved`` (filled as each file is written)."""
    for target, names in UPLOAD_FIELDS.items():
        sent = next((n for n in names if n in files), None)
        if sent is not None:
            try:
                path = await save_upload(
                    files[sent], config.uploads_dir, config.max_upload_bytes, prefix=f"{sent}_"
                )
            except UploadError as exc:  # "upload is empty": say which one
                raise UploadError(exc.cause, f"{sent}: {exc.message}") from None
            inputs.saved.append(path)
            inputs.sent[target] = sent
            inputs.uploaded.add(target)
            values[target] = str(path)
        elif values.get(target):
            sent = sent_name(raw, PATH_SPECS[target])
            inputs.sent[target] = sent
            path = confine(values[target], config.input_roots, sent)
            shared = _shared_root(path, config)
            if shared is not None:  # copied now: a later swap of the path changes nothing
                path = await copy_shared(path, shared, config.uploads_dir, config.max_upload_bytes, sent)
                inputs.saved.append(path)
                inputs.uploaded.add(target)
            values[target] = str(path)


def _shared_root(path: Path, config: Any) -> Path | None:
    """The shared root (the machine's temp folder) that holds ``path``, unless a folder the server
    owns holds it too (ACESTEP_TMPDIR may lie inside the machine's temp folder)."""
    if any(path.is_relative_to(root.resolve()) for root in config.owned_roots):
        return None
    return next((root for root in config.shared_roots if path.is_relative_to(root)), None)


async def settle_inputs(generation: GenerationRequest, inputs: Inputs) -> tuple[GenerationRequest, list[str]]:
    """Check the inputs the task reads (length, rate, channels: a 4xx before queueing) and drop the
    ones it does not, with a warning naming each."""
    warnings: list[str] = []
    for target, sent in inputs.sent.items():
        path = getattr(generation, target)
        if path is None:
            continue
        has_codes = bool(generation.audio_code_string.strip())
        if target == "src_audio" and not source_used(
            generation.task_type, has_codes, generation.flow_edit_morph
        ):
            why = "audio_code_string is set" if has_codes else f"task {generation.task_type!r} has no source"
            warnings.append(f"{sent} ignored: {why}, so the audio was neither checked nor used")
            if generation.task_type not in SOURCE_TASKS:  # a source task keeps it: it is required
                generation = generation.model_copy(update={target: None})
            continue
        check = check_audio if target in inputs.uploaded else check_audio_path
        shortest = (
            shortest_source(generation.task_type, generation.repainting_end)
            if target == "src_audio"
            else None
        )
        await run_in_threadpool(check, Path(path), sent, shortest)
    return generation, warnings


def check_audio(path: Path, field: str, min_seconds: float | None = None) -> float:
    """The upload's length, from its header read now in a bounded child process (audio_probe), so a
    broken file, or one past the input bounds (length, rate, channels, decoded size), is a 4xx
    before it is queued, not a failed job or gigabytes in the worker."""
    from acestep.engine.audio_limits import AudioInputError, UnreadableAudioError
    from acestep.engine.audio_probe import checked_seconds

    try:
        return checked_seconds(path, field, min_seconds)
    except UnreadableAudioError as exc:
        raise UploadError(RefusalCause.UNSUPPORTED_MEDIA, str(exc)) from None
    except AudioInputError as exc:
        raise UploadError(JobErrorKind.INPUT, str(exc)) from None


def check_audio_path(path: Path, field: str, min_seconds: float | None = None) -> None:
    """A server file a client names gets the upload's checks; a missing one stays the worker's
    "not found", as before."""
    try:
        present = path.is_file()
    except OSError:  # e.g. a name too long for the filesystem
        present = False
    if present:
        check_audio(path, field, min_seconds)
