"""Edits around the sampling loop: repaint modes, injection, boundary blend and waveform splice,
the chunk-mask mode, cover-nofsq, cover noise, latent shaping, fades and their order."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from acestep import GenerationRequest
from acestep.engine import conditioning
from acestep.engine.audio_io import SAMPLE_RATE, load_audio
from acestep.engine.cover_noise import cover_noise_start, noised_start
from acestep.engine.output import save_items
from acestep.engine.repaint import (
    RepaintSettings,
    blend_boundaries,
    inject_source,
    injection_steps,
    repaint_settings,
    settings_for_request,
    splice_waveform,
)
from acestep.engine.shaping import apply_fades, shape_latents
from acestep.tasks import INSTRUCTIONS
from acestep.testing import TINY_LATENT_DIM

C = TINY_LATENT_DIM


# --- repaint modes -------------------------------------------------------------------------------


def test_each_repaint_mode_resolves_to_upstreams_numbers():
    assert repaint_settings("aggressive", 0.5) == RepaintSettings(0.0, 0, 0.0, splice=False)
    assert repaint_settings("conservative", 0.9) == RepaintSettings(1.0, 25, 0.05)
    balanced = repaint_settings("balanced", 0.5)
    assert balanced == RepaintSettings(0.5, 12, 0.025)  # round(12.5) is 12 (half to even)
    low = repaint_settings("balanced", 0.3)
    assert (low.injection_ratio, low.latent_crossfade_frames) == (pytest.approx(0.7), 18)
    assert low.wav_crossfade_s == pytest.approx(0.035)


def test_repaint_strength_is_clamped_and_only_balanced_reads_it():
    assert (
        repaint_settings("balanced", 7.0) == repaint_settings("balanced", 1.0) == RepaintSettings(0.0, 0, 0.0)
    )
    assert (
        repaint_settings("balanced", -3.0)
        == repaint_settings("balanced", 0.0)
        == RepaintSettings(1.0, 25, 0.05)
    )
    assert repaint_settings("conservative", 0.0) == repaint_settings("conservative", 1.0)
    assert repaint_settings("no-such-mode", 0.5) == repaint_settings("balanced", 0.5)
    # balanced at strength 1 injects nothing and blends nothing, yet still splices (a hard cut)
    assert repaint_settings("balanced", 1.0).splice


def test_explicit_crossfade_fields_are_accepted_unused_with_a_note(source_wav):
    request = GenerationRequest(
        task_type="repaint",
        src_audio=str(source_wav),
        repaint_latent_crossfade_frames=40,
        repaint_wav_crossfade_sec=0.5,
    )
    assert settings_for_request(request) == RepaintSettings(0.5, 12, 0.025)  # upstream: the mode's
    assert any(
        "repaint_latent_crossfade_frames" in note and "no effect" in note for note in request.field_notes
    )


def test_injection_steps_round_half_to_even():
    assert injection_steps(0.5, 8) == 4
    assert injection_steps(0.5, 5) == 2  # round(2.5)
    assert injection_steps(0.5, 7) == 4  # round(3.5)
    assert injection_steps(1.0, 3) == 3 and injection_steps(0.0, 50) == 0


# --- injection, boundary blend, splice -----------------------------------------------------------


def _window_mask(frames: int, start: int, end: int) -> torch.Tensor:
    mask = torch.zeros(1, frames, dtype=torch.bool)
    mask[:, start:end] = True
    return mask


def test_injection_replaces_outside_the_window_and_keeps_the_inside():
    generator = torch.Generator().manual_seed(0)
    x, noise, clean = (torch.randn(2, 40, C, generator=generator) for _ in range(3))
    mask = _window_mask(40, 10, 25)
    out = inject_source(x, 0.25, noise, clean[:1], mask)
    expected = 0.25 * noise + 0.75 * clean[:1]
    assert torch.equal(out[:, 10:25], x[:, 10:25])
    assert torch.equal(out[:, :10], expected[:, :10]) and torch.equal(out[:, 25:], expected[:, 25:])
    # t_next 0 (after the last step) puts the clean source itself outside the window
    assert torch.equal(inject_source(x, 0.0, noise, clean, mask)[:, :10], clean[:, :10])


def test_boundary_blend_ramps_just_outside_the_window():
    frames, start, end, width = 60, 20, 35, 6
    generated, clean = torch.zeros(1, frames, C), torch.ones(1, frames, C)
    blended = blend_boundaries(generated, clean, _window_mask(frames, start, end), width)
    gain = 1.0 - blended[0, :, 0]  # share of the generated latents per frame
    assert torch.equal(blended[:, start:end], generated[:, start:end])  # the window is untouched
    assert torch.equal(blended[:, : start - width], clean[:, : start - width])  # source exactly
    assert torch.equal(blended[:, end + width :], clean[:, end + width :])
    left, right = gain[start - width : start], gain[end : end + width]
    assert torch.all(left.diff() > 0) and torch.all(right.diff() < 0)  # monotonic linear ramps
    assert torch.all((left > 0) & (left < 1)) and torch.all((right > 0) & (right < 1))  # no end points
    torch.testing.assert_close(left, torch.linspace(0, 1, width + 2)[1:-1])
    torch.testing.assert_close(right, torch.linspace(1, 0, width + 2)[1:-1])


def test_boundary_blend_at_the_edge_and_without_crossfade():
    generated, clean = torch.zeros(2, 30, C), torch.ones(2, 30, C)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, 3:10] = True
    mask[1] = True  # an item without a window: all generate
    blended = blend_boundaries(generated, clean, mask, 10)
    torch.testing.assert_close(1.0 - blended[0, :3, 0], torch.tensor([0.25, 0.5, 0.75]))  # cut short
    assert torch.equal(blended[1], generated[1])
    assert blend_boundaries(generated, clean, mask, 0) is generated  # width 0: no blend at all


def test_waveform_splice_puts_the_source_back_outside_the_window():
    samples = 4800
    pred, source = torch.zeros(1, 2, samples), torch.ones(2, samples)
    spliced = splice_waveform(pred, source, (1000, 2000), 0.002)  # 96-sample ramps
    ramp = 96
    assert torch.equal(spliced[..., 1000:2000], pred[..., 1000:2000])
    assert torch.equal(spliced[..., : 1000 - ramp], torch.ones(1, 2, 1000 - ramp))
    assert torch.equal(spliced[..., 2000 + ramp :], torch.ones(1, 2, samples - 2000 - ramp))
    assert torch.all(spliced[0, 0, 1000 - ramp : 1000].diff() < 0)  # fades into the window
    hard = splice_waveform(pred, source, (1000, 2000), 0.0)
    assert torch.equal(hard[..., :1000], torch.ones(1, 2, 1000)) and torch.equal(
        hard[..., 1000:2000], pred[..., 1000:2000]
    )


def test_waveform_splice_edge_cases():
    pred, source = torch.full((1, 2, 3000), 0.5), torch.ones(2, 2000)
    assert splice_waveform(pred, source, (0, 5000), 0.01) is pred  # the window covers all: unchanged
    spliced = splice_waveform(pred, source, (500, 1000), 0.0)
    assert spliced.shape == pred.shape
    assert torch.equal(spliced[..., 2000:], pred[..., 2000:])  # beyond the source: the prediction
    assert torch.equal(spliced[..., :500], torch.ones(1, 2, 500))


# --- cover noise ---------------------------------------------------------------------------------


def test_cover_noise_start_picks_the_nearest_timestep():
    schedule = [1.0, 0.75, 0.5, 0.25]
    assert cover_noise_start(schedule, 0.5) == (2, 0.5)
    assert cover_noise_start(schedule, 0.375) == (1, 0.75)  # 0.625 is as near 0.75 as 0.5: the first
    assert cover_noise_start(schedule, 1.0) == (3, 0.25)  # the end closest to the source
    assert cover_noise_start(schedule, 0.0) is None  # plain noise
    index, t = cover_noise_start([1.0, 0.7, 0.3], 0.7, dtype=torch.bfloat16)
    assert index == 2 and t == torch.tensor(0.3, dtype=torch.bfloat16).item() != 0.3  # model-dtype value


def test_noised_start_mixes_noise_and_source():
    noise, source = torch.full((1, 4, C), 2.0), torch.full((1, 4, C), -1.0)
    torch.testing.assert_close(noised_start(noise, source, 0.25), torch.full((1, 4, C), 0.25 * 2.0 - 0.75))


# --- output shaping ------------------------------------------------------------------------------


def test_latent_shaping_is_rescale_then_shift_and_a_no_op_by_default():
    latents = torch.randn(1, 8, C, generator=torch.Generator().manual_seed(3))
    assert shape_latents(latents) is latents
    torch.testing.assert_close(shape_latents(latents, 0.5, 2.0), latents * 2.0 + 0.5)


def test_fades_are_linear_to_zero_at_both_ends():
    wav = torch.ones(2, 1000)
    faded = apply_fades(wav, fade_in_s=0.01, fade_out_s=0.02, sample_rate=10000)  # 100 and 200 samples
    assert faded.shape == wav.shape and torch.equal(wav, torch.ones(2, 1000))  # a copy
    assert torch.equal(faded[:, 0], torch.zeros(2)) and torch.equal(faded[:, -1], torch.zeros(2))
    torch.testing.assert_close(faded[0, :100], torch.linspace(0, 1, 100))
    torch.testing.assert_close(faded[1, -200:], torch.linspace(1, 0, 200))
    assert torch.equal(faded[:, 100:800], wav[:, 100:800])
    assert apply_fades(wav) is wav
    whole = apply_fades(torch.ones(1, 50), fade_in_s=1.0, sample_rate=100)  # longer than the item
    torch.testing.assert_close(whole[0], torch.linspace(0, 1, 50))
    assert apply_fades(torch.ones(1, 10), fade_in_s=0.25, sample_rate=10)[0, :3].tolist() == [0.0, 1.0, 1.0]


def test_fades_come_after_peak_normalisation(tmp_path):
    """A peak inside the fade-in sets the gain (normalised first); faded first, the flat middle would."""
    wav = torch.full((1, 2, SAMPLE_RATE), 0.5)
    wav[0, :, 2400] = 0.9  # inside the 0.1 s fade-in, where its gain is about 1/2
    request = GenerationRequest(caption="x", audio_format="wav", fade_in_duration=0.1, fade_out_duration=0.05)
    plan = None  # save_items does not read the plan
    item = save_items(request, wav, [1], plan, tmp_path, "tiny")[0]
    audio, _ = sf.read(item.path, dtype="float32", always_2d=True)
    target = 10 ** (-1 / 20)
    assert audio[SAMPLE_RATE // 2, 0] == pytest.approx(0.5 * target / 0.9, rel=1e-5)
    assert audio[0, 0] == 0.0 and audio[-1, 0] == 0.0
    assert audio.shape[0] == SAMPLE_RATE


# --- plans: chunk mask mode, repaint, lego, cover-nofsq -------------------------------------------


def _plan(engine, **fields) -> conditioning.TaskPlan:
    request = GenerationRequest(**fields)
    source = load_audio(request.src_audio) if request.src_audio else None
    return conditioning.plan_task(
        request, engine.components, engine.codec, source, None, engine.silence_latent, engine.dtype
    )


def test_chunk_mask_auto_is_two_everywhere_and_explicit_keeps_the_window(engine_upstream_turbo, source_wav):
    engine = engine_upstream_turbo
    text = _plan(engine, caption="x", audio_duration=6.0)
    assert torch.equal(text.chunk_mask, torch.full((1, 150), 2.0))  # auto is the default
    assert torch.equal(text.context()[0, :, C:], torch.full((150, C), 2.0))
    explicit = _plan(engine, caption="x", audio_duration=6.0, chunk_mask_mode="explicit")
    assert torch.equal(explicit.chunk_mask, torch.ones(1, 150))
    window = dict(task_type="repaint", src_audio=str(source_wav), repainting_start=1.0, repainting_end=3.0)
    auto = _plan(engine, **window)
    exact = _plan(engine, **window, chunk_mask_mode="explicit")
    assert torch.equal(auto.chunk_mask, torch.full((1, 150), 2.0))
    assert torch.equal(exact.chunk_mask[0, 25:75], torch.ones(50)) and exact.chunk_mask.sum() == 50
    for plan in (auto, exact):  # the window still silences the context and bounds the repaint
        assert torch.equal(plan.src_latents, exact.src_latents)
        assert torch.equal(plan.repaint_mask, _window_mask(150, 25, 75))


def test_repaint_plan_carries_the_clean_source_and_the_splice_inputs(engine_upstream_turbo, source_wav):
    engine = engine_upstream_turbo
    plan = _plan(
        engine,
        task_type="repaint",
        src_audio=str(source_wav),
        repainting_start=-1.0,  # outpaint one second before the source
        repainting_end=2.0,
        repaint_mode="conservative",
    )
    assert plan.frames == 175 and plan.source_wav.shape == (2, 7 * SAMPLE_RATE)
    assert plan.window_samples == (0, 3 * SAMPLE_RATE)
    assert torch.equal(plan.repaint_mask, _window_mask(175, 0, 75))
    assert plan.repaint == RepaintSettings(1.0, 25, 0.05)
    silence = engine.silence_latent[0]
    assert torch.equal(plan.src_latents[0, :75], silence[:75])  # silenced window
    assert not torch.equal(plan.clean_latents[0, 25:75], silence[25:75])  # the clean one is not
    assert torch.equal(plan.clean_latents[0, 75:], plan.src_latents[0, 75:])
    assert torch.equal(plan.cover_noise_latents(), plan.src_latents)  # upstream renoises the context


def test_lego_window_keeps_its_envelope_and_no_injection(engine_upstream_base, source_wav):
    plan = _plan(
        engine_upstream_base,
        task_type="lego",
        src_audio=str(source_wav),
        repainting_start=1.0,
        repainting_end=3.0,
    )
    assert plan.window == (25, 75) and plan.repaint_mask is None and plan.repaint is None
    assert torch.equal(plan.clean_latents, plan.src_latents)


def test_cover_nofsq_conditions_on_the_raw_latents(engine_upstream_turbo, source_wav):
    engine = engine_upstream_turbo
    cover = _plan(engine, task_type="cover", src_audio=str(source_wav))
    raw = _plan(engine, task_type="cover-nofsq", src_audio=str(source_wav))
    assert cover.is_cover and not raw.is_cover
    torch.testing.assert_close(raw.src_latents, cover.pre_fsq_latents, rtol=0, atol=1e-6)
    torch.testing.assert_close(raw.src_latents, raw.clean_latents, rtol=0, atol=0)
    assert (raw.src_latents - cover.src_latents).abs().max() > 1e-3  # cover's FSQ round trip differs
    assert raw.instruction == cover.instruction == INSTRUCTIONS["cover"]
    assert raw.target_samples == 6 * SAMPLE_RATE
    torch.testing.assert_close(cover.cover_noise_latents(), raw.src_latents, rtol=0, atol=1e-6)


def test_cover_nofsq_with_audio_codes_is_a_cover_of_the_codes(engine_upstream_turbo, source_wav):
    codes = "".join(f"<|audio_code_{i}|>" for i in (1, 5, 9, 2) * 8)
    plan = _plan(
        engine_upstream_turbo, task_type="cover-nofsq", src_audio=str(source_wav), audio_code_string=codes
    )
    assert plan.is_cover  # codes win, as upstream
    assert torch.equal(plan.cover_noise_latents()[0, :10], engine_upstream_turbo.silence_latent[0, :10])


def test_cover_nofsq_runs_end_to_end(engine_upstream_turbo, source_wav, tmp_path):
    result = engine_upstream_turbo.generate(
        GenerationRequest(
            task_type="cover-nofsq",
            src_audio=str(source_wav),
            caption="x",
            seed=1,
            batch_size=1,
            audio_format="wav",
        ),
        tmp_path,
    )
    audio, rate = sf.read(result.audio_paths[0], dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE and audio.shape == (6 * SAMPLE_RATE, 2) and np.isfinite(audio).all()
    assert result.task_type == "cover-nofsq"
