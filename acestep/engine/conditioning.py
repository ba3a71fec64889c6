"""What the DiT is conditioned on, per task: context latents, chunk mask and target length.

The DiT input is ``[src_latents (C), chunk_mask (C), noisy latents (C)]``; mask 1 means
"generate here", 0 "keep / condition here", and 2 (``chunk_mask_mode`` auto, the default, as
upstream) on every frame "the model decides". The rules below are the explicit masks
(docs/tasks.md; patches/0001, 0012):

- text2music: silence-latent context, mask all 1.
- cover: the source's FSQ round trip (or decoded audio codes), mask all 1.
- cover-nofsq: the source's raw VAE latents (no FSQ round trip), mask all 1; audio codes make it
  a cover of the codes, as upstream.
- repaint: the (outpaint-padded) source with its window silenced, mask 1 on the window.
- **lego**: the full, unsilenced source everywhere; mask 1 on the whole source by default, or
  on an explicit window only. Padding beyond the source holds silence and mask 0 (patches/0001).
- extract, complete: the full source, mask all 1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from acestep.engine.audio_io import SAMPLE_RATE, frames_for_seconds, is_silent, seconds_to_frame
from acestep.engine.codec import HOP, AudioCodec, pad_with, tile_frames
from acestep.engine.repaint import RepaintSettings, settings_for_request
from acestep.request import GenerationRequest
from acestep.tasks import AUTO_DURATION_S, build_instruction, with_colon

MIN_FRAMES = 128  # upstream's minimum sequence (5.12 s)
REFERENCE_SECONDS = 30
REFERENCE_WINDOW_SECONDS = 10
REFERENCE_FRAMES = 750
CODE_RE = re.compile(r"<\|audio_code_(\d+)\|>")
FRAMES_PER_CODE = 5
AUTO_CHUNK_MASK = 2.0  # chunk_mask_mode auto: the value that tells the DiT to decide itself


class ConditioningError(ValueError):
    """The request cannot be turned into conditioning (e.g. a window outside the source)."""


@dataclass
class TaskPlan:
    """Batch-independent conditioning of one request."""

    task: str
    instruction: str
    frames: int  # DiT sequence length (>= MIN_FRAMES)
    target_samples: int  # samples of the returned audio
    src_latents: torch.Tensor  # [1, frames, C]
    chunk_mask: torch.Tensor  # [1, frames] float: 0/1 (explicit) or AUTO_CHUNK_MASK (auto)
    is_cover: bool
    metas_duration_s: float | None
    window: tuple[int, int] | None = None  # lego: explicit generation window in frames
    notes: list[str] = field(default_factory=list)
    # The source's VAE latents, never silenced, padded to ``frames`` (every source task; lego: the
    # context itself). Repaint re-imposes them outside its window.
    clean_latents: torch.Tensor | None = None
    # Upstream's context before cover's FSQ swap where it differs from src_latents (cover: the raw
    # source; audio codes: silence): what cover_noise_strength noises.
    pre_fsq_latents: torch.Tensor | None = None
    # Repaint only: [1, frames] bool, True = generate; its settings; the outpaint-padded source
    # waveform [2, samples] and the window in its samples, for the splice after decoding.
    repaint_mask: torch.Tensor | None = None
    repaint: RepaintSettings | None = None
    source_wav: torch.Tensor | None = None
    window_samples: tuple[int, int] | None = None

    def context(self) -> torch.Tensor:
        """[1, frames, 2C]: source latents then the mask repeated over the channels."""
        mask = self.chunk_mask.unsqueeze(-1).expand_as(self.src_latents).to(self.src_latents)
        return torch.cat([self.src_latents, mask], dim=-1)

    def cover_noise_latents(self) -> torch.Tensor:
        """What ``cover_noise_strength`` noises toward: upstream's context before the FSQ swap."""
        return self.pre_fsq_latents if self.pre_fsq_latents is not None else self.src_latents


def parse_audio_codes(text: str, codebook_size: int) -> list[int]:
    return [min(max(int(v), 0), codebook_size - 1) for v in CODE_RE.findall(text)]


@torch.inference_mode()
def decode_codes(codes: list[int], tokenizer, detokenizer, dtype: torch.dtype) -> torch.Tensor:
    """5 Hz codes -> [1, 5 * n, C] 25 Hz hints via the FSQ codebook and the detokenizer."""
    device = next(detokenizer.parameters()).device
    indices = torch.tensor(codes, device=device, dtype=torch.long).view(1, -1, 1)
    quantized = tokenizer.quantizer.get_output_from_indices(indices).to(dtype)
    return detokenizer(quantized).to(dtype)


@torch.inference_mode()
def fsq_round_trip(latents: torch.Tensor, silence: torch.Tensor, tokenizer, detokenizer) -> torch.Tensor:
    """Cover's semantic-only view of the source: tokenise at 5 Hz, detokenise, crop to length."""
    quantized, _ = tokenizer.tokenize(latents, tile_frames(silence, FRAMES_PER_CODE))
    return detokenizer(quantized.to(latents))[:, : latents.shape[1]].to(latents)


def reference_latents(
    codec: AudioCodec, wav: torch.Tensor | None, silence: torch.Tensor, dtype
) -> torch.Tensor:
    """The timbre input [1, 750, C]: three 10 s windows of the reference, or the silence latent.

    Upstream picks each window at a random offset inside its third (Python's global RNG); here
    each window starts at the beginning of its third, so the same reference gives the same timbre.
    """
    if wav is None:
        return tile_frames(silence, REFERENCE_FRAMES)
    need = REFERENCE_SECONDS * SAMPLE_RATE
    if wav.shape[-1] < need:
        wav = wav.repeat(1, math.ceil(need / wav.shape[-1]))
    third = wav.shape[-1] // 3
    window = REFERENCE_WINDOW_SECONDS * SAMPLE_RATE
    clip = torch.cat([wav[:, i * third : i * third + window] for i in range(3)], dim=-1)
    return pad_with(codec.encode(clip, dtype), silence, REFERENCE_FRAMES)


def _mask(frames: int, start: int, end: int, device) -> torch.Tensor:
    mask = torch.zeros(1, frames, device=device)
    mask[:, start:end] = 1.0
    return mask


def plan_text2music(request: GenerationRequest, silence: torch.Tensor) -> TaskPlan:
    notes = []
    duration = request.audio_duration
    if duration <= 0:
        duration = AUTO_DURATION_S
        notes.append(f"no audio_duration given: generating {AUTO_DURATION_S:.0f} s")
    target = max(frames_for_seconds(duration), 1)
    frames = max(target, MIN_FRAMES)
    return TaskPlan(
        task="text2music",
        instruction=_instruction(request),
        frames=frames,
        target_samples=target * HOP,
        src_latents=tile_frames(silence, frames),
        chunk_mask=torch.ones(1, frames, device=silence.device),
        is_cover=False,
        metas_duration_s=duration,
        notes=notes,
    )


def plan_from_codes(request: GenerationRequest, hints: torch.Tensor, silence: torch.Tensor) -> TaskPlan:
    target = hints.shape[1]
    frames = max(target, MIN_FRAMES)
    notes = ["audio codes given: the source audio is not used"] if request.src_audio else []
    return TaskPlan(
        task=request.effective_task,
        instruction=_instruction(request),
        frames=frames,
        target_samples=target * HOP,
        src_latents=pad_with(hints, silence, frames),
        chunk_mask=torch.ones(1, frames, device=silence.device),
        is_cover=True,
        metas_duration_s=target * HOP / SAMPLE_RATE,
        notes=notes,
        pre_fsq_latents=tile_frames(silence, frames),
    )


def plan_from_source(
    request: GenerationRequest, codec: AudioCodec, wav: torch.Tensor, silence: torch.Tensor, dtype, fsq=None
) -> TaskPlan:
    """Plans for every task that conditions on source audio (repaint, cover, cover-nofsq, lego,
    extract, complete), and for a flow edit of text2music (which edits the source)."""
    task = request.effective_task
    source_seconds = wav.shape[-1] / SAMPLE_RATE
    if task == "repaint":
        return _plan_repaint(request, codec, wav, silence, dtype, source_seconds)
    if task == "lego" and request.repainting_end > source_seconds:
        # Upstream's outpainting: the source is padded with silence up to the window's end, so a
        # short (or 0.1 s silent) source gives a stem as long as repainting_end (docs/tasks.md).
        tail = int(round((request.repainting_end - source_seconds) * SAMPLE_RATE))
        wav = torch.nn.functional.pad(wav, (0, tail))
        source_seconds = wav.shape[-1] / SAMPLE_RATE
    if is_silent(wav):  # silence context, as upstream: no VAE encode of zeros (first-track lego)
        latents = tile_frames(silence, max(wav.shape[-1] // HOP, 1)).to(dtype)
    else:
        latents = codec.encode(wav, dtype)
    source_frames = latents.shape[1]
    frames = max(source_frames, MIN_FRAMES)
    src = pad_with(latents, silence, frames)
    device = silence.device
    plan = TaskPlan(
        task=task,
        instruction=_instruction(request),
        frames=frames,
        target_samples=wav.shape[-1],
        src_latents=src,
        chunk_mask=torch.ones(1, frames, device=device),
        is_cover=False,
        metas_duration_s=source_seconds,
        clean_latents=src,
    )
    if task == "cover":
        plan.pre_fsq_latents = src
        plan.src_latents = fsq(src)
        plan.is_cover = True
    elif task == "text2music":  # a flow edit: text2music's silence context, the source to edit
        plan.src_latents = tile_frames(silence, frames)
    elif task == "lego":
        start, end = _lego_window(request, source_frames)
        plan.chunk_mask = _mask(frames, start, end, device)
        if (start, end) != (0, source_frames):
            plan.window = (start, end)
    return plan


def _lego_window(request: GenerationRequest, source_frames: int) -> tuple[int, int]:
    """Default: the whole source. Explicit: [floor(s*25), floor(e*25)) clipped to the source."""
    start = min(max(seconds_to_frame(request.repainting_start), 0), source_frames)
    end = (
        source_frames
        if request.repainting_end <= 0
        else min(seconds_to_frame(request.repainting_end), source_frames)
    )
    if end <= start:
        seconds = source_frames * HOP / SAMPLE_RATE
        raise ConditioningError(
            f"lego window [{request.repainting_start}, {request.repainting_end}] s lies outside the "
            f"{seconds:.2f} s source"
        )
    return start, end


def _plan_repaint(request, codec, wav, silence, dtype, source_seconds) -> TaskPlan:
    start_s = request.repainting_start
    end_s = source_seconds if request.repainting_end <= 0 else request.repainting_end
    left = max(0.0, -start_s)
    right = max(0.0, end_s - source_seconds)
    padded = torch.nn.functional.pad(wav, (int(left * SAMPLE_RATE), int(right * SAMPLE_RATE)))
    latents = codec.encode(padded, dtype)
    target = latents.shape[1]
    frames = max(target, MIN_FRAMES)
    start = min(max(int((start_s + left) * SAMPLE_RATE // HOP), 0), frames - 1)
    end = min(max(int((end_s + left) * SAMPLE_RATE // HOP), start + 1), frames)
    mask = _mask(frames, start, end, silence.device)
    clean = pad_with(latents, silence, frames)
    src = torch.where(mask.unsqueeze(-1) > 0, tile_frames(silence, frames), clean)
    return TaskPlan(
        task="repaint",
        instruction=_instruction(request),
        frames=frames,
        target_samples=padded.shape[-1],
        src_latents=src,
        chunk_mask=mask,
        is_cover=False,
        metas_duration_s=source_seconds,
        clean_latents=clean,
        repaint_mask=mask > 0,
        repaint=settings_for_request(request),
        source_wav=padded,
        window_samples=(int((start_s + left) * SAMPLE_RATE), int((end_s + left) * SAMPLE_RATE)),
    )


def non_cover_plan(plan: TaskPlan, silence: torch.Tensor) -> TaskPlan:
    """Cover strength < 1: the condition set sampling switches to (silence source, text2music)."""
    return TaskPlan(
        task="text2music",
        instruction=build_instruction("text2music"),
        frames=plan.frames,
        target_samples=plan.target_samples,
        src_latents=tile_frames(silence, plan.frames),
        chunk_mask=plan.chunk_mask.clone(),
        is_cover=False,
        metas_duration_s=plan.metas_duration_s,
    )


def _instruction(request: GenerationRequest) -> str:
    if request.instruction and request.instruction.strip():
        return with_colon(request.instruction.strip())
    return build_instruction(request.effective_task, request.track_name, request.track_classes)


def window_envelope(window: tuple[int, int], samples: int, fade_frames: int = 10) -> torch.Tensor:
    """Gain [samples]: 1 inside a lego window, silence outside, with linear fades just outside it."""
    start, end = window[0] * HOP, window[1] * HOP
    fade = fade_frames * HOP
    position = torch.arange(samples, dtype=torch.float32)
    before = ((position - (start - fade)) / fade).clamp(0, 1)
    after = (((end + fade) - position) / fade).clamp(0, 1)
    return torch.minimum(before, after)


def plan_task(
    request: GenerationRequest,
    comps,
    codec: AudioCodec,
    source: torch.Tensor | None,
    item_codes: list[str] | None,
    silence: torch.Tensor,
    dtype: torch.dtype,
) -> TaskPlan:
    """The plan of any task: from the LM's per-item codes, a request's own codes, the source audio
    (VAE-encoded, FSQ round trip where the task wants it) or nothing (text2music); its chunk mask
    as ``chunk_mask_mode`` says."""
    plan = _plan_any(request, comps, codec, source, item_codes, silence, dtype)
    plan.chunk_mask = chunk_mask_for_mode(plan.chunk_mask, request.chunk_mask_mode)
    return plan


def chunk_mask_for_mode(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """explicit: the 0/1 mask as planned; auto: AUTO_CHUNK_MASK on every frame, as upstream (for
    every task; a repaint window still silences the context and bounds the injection)."""
    return torch.full_like(mask, AUTO_CHUNK_MASK) if mode == "auto" else mask


def _plan_any(request, comps, codec, source, item_codes, silence, dtype) -> TaskPlan:
    if item_codes:
        # The LM wrote one code string per item, all of the same length (the target duration).
        plans = [
            _codes_plan(request.model_copy(update={"audio_code_string": codes}), codes, comps, silence, dtype)
            for codes in item_codes
        ]
        plans[0].src_latents = torch.cat([p.src_latents for p in plans])
        return plans[0]
    if request.audio_code_string.strip():
        if not parse_audio_codes(request.audio_code_string, comps.audio_tokenizer.quantizer.codebook_size):
            raise ValueError("audio_code_string holds no <|audio_code_N|> tokens")
        return _codes_plan(request, request.audio_code_string, comps, silence, dtype)
    if source is None:
        return plan_text2music(request, silence)

    def fsq(latents: torch.Tensor) -> torch.Tensor:
        return fsq_round_trip(latents, silence, comps.audio_tokenizer, comps.audio_token_detokenizer)

    return plan_from_source(request, codec, source, silence, dtype, fsq)


def _codes_plan(request: GenerationRequest, code_string: str, comps, silence, dtype) -> TaskPlan:
    codes = parse_audio_codes(code_string, comps.audio_tokenizer.quantizer.codebook_size)
    hints = decode_codes(codes, comps.audio_tokenizer, comps.audio_token_detokenizer, dtype)
    return plan_from_codes(request, hints, silence)
