"""The editing fields of a request: cover noise, how repaint keeps and joins the source, flow-edit
morphing and the global caption of stem (lego) checkpoints. ``GenerationRequest`` inherits them.

Names, defaults and allowed values follow upstream ACE-Step 1.5's ``generate_music`` and its
``/release_task`` model. Upstream accepts each field with any task; so does this request, and a
field that cannot act on the request's task is named in a note (``edit_notes``) rather than dropped
without a word.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from acestep.request_sampling import choice, one_of
from acestep.tasks import (
    FLOW_EDIT_TASKS,
    LATENT_FRAMES_PER_SECOND,
    MAX_LYRICS_CHARS,
    MAX_NAME_CHARS,
    MAX_STEPS,
    MAX_TEXT_CHARS,
)

# conservative keeps the most of the source, aggressive regenerates the window from noise, and
# balanced blends them by repaint_strength.
REPAINT_MODES = ("conservative", "balanced", "aggressive")
# auto lets the model's chunk mask follow the context; explicit masks exactly the window.
CHUNK_MASK_MODES = ("auto", "explicit")
MAX_CROSSFADE_FRAMES = 10 * LATENT_FRAMES_PER_SECOND  # 10 s; upstream's UI goes to 50 frames
MAX_WAV_CROSSFADE_S = 10.0  # upstream's UI goes to 2 s
MAX_FLOW_EDIT_AVG = 16  # samples averaged per flow-edit step; upstream's UI goes to 8
# The task whose window keeps the source outside it: injection, latent crossfade, waveform splice.
REPAINT_TASKS = frozenset({"repaint"})
REPAINT_KNOBS = ("repaint_mode", "repaint_strength")
# Accepted as upstream accepts them; upstream's crossfades follow repaint_mode and repaint_strength.
CROSSFADE_FIELDS = ("repaint_latent_crossfade_frames", "repaint_wav_crossfade_sec")
# What a flow edit does not use: it starts from the source, with its own noise and condition sets.
FLOW_EDIT_IDLE = ("retake_variance", "cover_noise_strength", "audio_cover_strength")
FLOW_EDIT_KNOBS = (
    "flow_edit_source_caption",
    "flow_edit_source_lyrics",
    "flow_edit_n_min",
    "flow_edit_n_max",
    "flow_edit_n_avg",
)


class EditFields(BaseModel):
    """What a job that works on source audio keeps of it, and how it joins the new part."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # cover (and repaint): how much of the source the starting noise keeps (0: pure noise).
    cover_noise_strength: float = Field(0.0, ge=0.0, le=1.0)
    repaint_mode: str = Field("balanced", max_length=MAX_NAME_CHARS, json_schema_extra=one_of(REPAINT_MODES))
    repaint_strength: float = Field(0.5, ge=0.0, le=1.0)  # balanced mode: 0 conservative, 1 aggressive
    repaint_latent_crossfade_frames: int = Field(10, ge=0, le=MAX_CROSSFADE_FRAMES)
    repaint_wav_crossfade_sec: float = Field(0.0, ge=0.0, le=MAX_WAV_CROSSFADE_S)  # 0: a hard cut
    chunk_mask_mode: str = Field(
        "auto", max_length=MAX_NAME_CHARS, json_schema_extra=one_of(CHUNK_MASK_MODES)
    )
    # Flow edit: change the source toward the request's caption and lyrics, from the source's own
    # caption and lyrics, inside the [n_min, n_max] part of the schedule.
    flow_edit_morph: bool = False
    flow_edit_source_caption: str = Field("", max_length=MAX_TEXT_CHARS)
    flow_edit_source_lyrics: str = Field("", max_length=MAX_LYRICS_CHARS)
    flow_edit_n_min: float = Field(0.0, ge=0.0, le=1.0)
    flow_edit_n_max: float = Field(1.0, ge=0.0, le=1.0)
    flow_edit_n_avg: int = Field(1, ge=1, le=MAX_FLOW_EDIT_AVG)
    # Stem (lego) SFT checkpoints: the whole song's description; the caption describes the stem.
    global_caption: str = Field("", max_length=MAX_TEXT_CHARS)

    @field_validator("repaint_mode", mode="before")
    @classmethod
    def _repaint_mode(cls, value: object) -> str:
        return choice("repaint_mode", value, REPAINT_MODES)

    @field_validator("chunk_mask_mode", mode="before")
    @classmethod
    def _chunk_mask_mode(cls, value: object) -> str:
        return choice("chunk_mask_mode", value, CHUNK_MASK_MODES)

    @model_validator(mode="after")
    def _edit_cross_fields(self) -> EditFields:
        if self.flow_edit_n_min > self.flow_edit_n_max:
            raise ValueError(
                f"flow_edit_n_min ({self.flow_edit_n_min:g}) must be <= "
                f"flow_edit_n_max ({self.flow_edit_n_max:g})"
            )
        return self

    def check_flow_edit(self, has_source: bool, has_codes: bool, steps: int) -> None:
        """A flow edit needs the source it edits, not audio codes, and a bounded number of DiT
        passes (steps x draws per branch, at most a longest ordinary job's steps)."""
        if not has_source:
            raise ValueError("flow_edit_morph edits a source: send src_audio (the audio to change)")
        if has_codes:
            raise ValueError("flow_edit_morph edits src_audio; audio_code_string cannot stand for it")
        if steps * self.flow_edit_n_avg > MAX_STEPS:
            raise ValueError(
                f"a flow edit runs inference_steps x flow_edit_n_avg DiT passes per branch: "
                f"{steps} x {self.flow_edit_n_avg} is over {MAX_STEPS}"
            )

    def edit_notes(self, task: str) -> list[str]:
        """Fields sent that cannot act on ``task`` (the request's effective task)."""
        sent = self.model_fields_set
        notes = []
        repaint = [name for name in REPAINT_KNOBS if name in sent]
        if repaint and task not in REPAINT_TASKS:
            notes.append(f"{', '.join(repaint)}: no effect on task {task!r} (repaint only)")
        elif "repaint_strength" in sent and self.repaint_mode != "balanced":
            mode = self.repaint_mode
            notes.append(f"repaint_strength is used by repaint_mode 'balanced' only, not {mode!r}")
        crossfades = [name for name in CROSSFADE_FIELDS if name in sent]
        if crossfades:
            notes.append(
                f"{', '.join(crossfades)}: no effect; the crossfades follow repaint_mode and "
                "repaint_strength, as upstream"
            )
        flow = [name for name in FLOW_EDIT_KNOBS if name in sent]
        if flow and not self.flow_edit_morph:
            notes.append(f"{', '.join(flow)}: no effect while flow_edit_morph is false")
        idle = [name for name in FLOW_EDIT_IDLE if name in sent]
        if self.flow_edit_morph and task in FLOW_EDIT_TASKS and idle:
            notes.append(f"{', '.join(idle)}: no effect with flow_edit_morph (it starts from the source)")
        if self.flow_edit_morph and task not in FLOW_EDIT_TASKS:
            tasks = ", ".join(sorted(FLOW_EDIT_TASKS))
            notes.append(f"flow_edit_morph: no effect on task {task!r} (only {tasks})")
        return notes
