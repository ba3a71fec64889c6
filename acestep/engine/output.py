"""From final latents to files: the checks that refuse unusable output, length fitting, saving."""

from __future__ import annotations

from pathlib import Path

import torch

from acestep.engine import audio_io, conditioning, shaping
from acestep.request import GenerationRequest
from acestep.result import AudioItem


class GenerationError(RuntimeError):
    """Generation ran but produced unusable output (NaN, all-zero or silent audio)."""


def check_latents(latents: torch.Tensor, precision: str = "") -> None:
    if not torch.isfinite(latents).all():
        hints = {
            "float16": " in plain float16; ACESTEP_DTYPE=fp16-mixed keeps the lyric encoder in float32",
            "fp16-mixed": " in fp16-mixed; ACESTEP_DTYPE=float32 avoids fp16 overflow at twice the memory",
        }
        hint = hints.get(precision, "")
        raise GenerationError(f"generation produced NaN or infinite latents{hint}")
    if not latents.abs().amax().item():
        raise GenerationError("generation produced all-zero latents")


def fit_length(audio: torch.Tensor, plan: conditioning.TaskPlan) -> torch.Tensor:
    """Return exactly the target's samples (a stem lines up with its source sample for sample)."""
    samples = plan.target_samples
    if audio.shape[-1] >= samples:
        audio = audio[..., :samples]
    else:
        audio = torch.nn.functional.pad(audio, (0, samples - audio.shape[-1]))
    if plan.window is not None:
        audio = audio * conditioning.window_envelope(plan.window, samples)
    return audio


def save_items(
    request: GenerationRequest,
    audio: torch.Tensor,
    seeds: list[int],
    plan: conditioning.TaskPlan,
    output_dir: str | Path,
    model: str,
) -> list[AudioItem]:
    """Write one file per item; a silent item fails the job rather than reaching the user. Each item
    is peak-normalised (``enable_normalization``), then faded (``fade_in_duration``,
    ``fade_out_duration``), then written."""
    items = []
    for index, (wav, seed) in enumerate(zip(audio, seeds, strict=True)):
        if audio_io.output_is_silent(wav):
            raise GenerationError(
                f"item {index} (seed {seed}) came out silent; try another seed or check the inputs"
            )
        # Upstream's order: peak normalisation first, then the fades (so a fade ends at 0).
        if request.enable_normalization:
            wav = audio_io.peak_normalize(wav, request.normalization_db)
        wav = shaping.apply_fades(wav, request.fade_in_duration, request.fade_out_duration)
        params = request.model_dump(mode="json", exclude={"keep_alive"}) | {"seed": seed, "model": model}
        path = audio_io.save_audio(wav, output_dir, audio_io.file_stem(params), request.audio_format)
        items.append(
            AudioItem(
                path=str(path),
                seed=seed,
                sample_rate=audio_io.SAMPLE_RATE,
                duration=wav.shape[-1] / audio_io.SAMPLE_RATE,
                peak=float(wav.abs().max()),
            )
        )
    return items


def result_metas(
    request: GenerationRequest,
    plan: conditioning.TaskPlan,
    schedule: list[float],
    retake_seeds: list[int] | None,
) -> dict:
    """What a result reports of how it was made (the LM's own metas are added by the engine)."""
    return {
        "bpm": request.bpm,
        "key_scale": request.key_scale,
        "time_signature": request.time_signature,
        "duration": plan.target_samples / audio_io.SAMPLE_RATE,
        "caption": request.caption,
        "vocal_language": request.vocal_language,
        "instruction": plan.instruction,
        "steps": len(schedule),
        "timesteps": schedule,
        **({"retake_seeds": retake_seeds} if retake_seeds else {}),
        "lora": [{"name": name, "scale": scale} for name, scale in request.adapters],
    }
