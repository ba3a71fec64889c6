"""The audio a request brings: its source (when the task or a flow edit reads it) and its timbre
reference, loaded as 48 kHz stereo.

A silent reference is refused (it has no timbre to give); a silent source is silence context, as
upstream: lego on it writes a first track (docs/tasks.md).
"""

from __future__ import annotations

import torch

from acestep.engine import audio_io
from acestep.engine.audio_limits import shortest_source
from acestep.request import GenerationRequest
from acestep.tasks import source_used


def load_inputs(request: GenerationRequest) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(source, reference), each [2, samples] or None when the request does not use it."""
    has_codes = bool(request.audio_code_string.strip())
    uses_source = request.src_audio and source_used(request.task_type, has_codes, request.flow_edit_morph)
    shortest = shortest_source(request.task_type, request.repainting_end)
    source = audio_io.load_audio(request.src_audio, min_seconds=shortest) if uses_source else None
    reference = audio_io.load_audio(request.reference_audio) if request.reference_audio else None
    if reference is not None and audio_io.is_silent(reference):
        raise audio_io.AudioInputError("reference audio is silent")
    return source, reference
