"""Lego keeps the whole source as context (upstream #809); what the transformer receives, inspected."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from _util import TransformerSpy, generate

from acestep.engine.audio_io import load_audio
from acestep.engine.codec import HOP
from acestep.testing import TINY_LATENT_DIM, synthetic_audio

C = TINY_LATENT_DIM


def _source_latents(engine, path) -> torch.Tensor:
    """The source's posterior mean straight from diffusers' VAE (no acestep code in between)."""
    wav = load_audio(path)
    with torch.no_grad():
        mean = engine.components.vae.encode(wav[None]).latent_dist.mean
    return mean.transpose(1, 2)[0]


@pytest.fixture(scope="module")
def short_source(tmp_path_factory) -> str:
    """3 s: 75 frames, shorter than the 128-frame minimum, so padding frames exist."""
    path = tmp_path_factory.mktemp("src") / "short.wav"
    sf.write(path, synthetic_audio(3.0, seed=5), 48000)
    return str(path)


def test_lego_default_context_is_full_unsilenced_source(engine_upstream_base, source_wav, tmp_path):
    engine = engine_upstream_base
    with TransformerSpy(engine) as spy:
        result, audio = generate(
            engine,
            tmp_path,
            task_type="lego",
            track_name="vocals",
            src_audio=source_wav,
            chunk_mask_mode="explicit",
            seed=3,
            batch_size=1,
            inference_steps=4,
            guidance_scale=7.0,
        )
    expected = _source_latents(engine, source_wav)
    frames = expected.shape[0]
    assert frames == 150  # 6 s at 25 frames per second
    assert len(spy.calls) == 4
    for call in spy.calls:
        context = call["context_latents"]
        assert context.shape == (2, frames, 2 * C)  # CFG doubles the batch; both halves see the source
        for half in context:
            torch.testing.assert_close(half[:, :C], expected, rtol=0, atol=1e-6)
            assert torch.equal(half[:, C:], torch.ones(frames, C))  # default window = the whole track
    assert result.metas["instruction"] == "Generate the VOCALS track based on the audio context:"
    assert audio.shape == (1, 2, 6 * 48000)  # the stem lines up with its source sample for sample


def test_lego_padding_beyond_short_source_is_silence_with_mask_zero(
    engine_upstream_base, short_source, tmp_path
):
    engine = engine_upstream_base
    with TransformerSpy(engine) as spy:
        _, audio = generate(
            engine,
            tmp_path,
            task_type="lego",
            src_audio=short_source,
            chunk_mask_mode="explicit",
            seed=1,
            batch_size=1,
            inference_steps=2,
            guidance_scale=1.0,
        )
    expected = _source_latents(engine, short_source)
    source_frames = expected.shape[0]
    context = spy.calls[0]["context_latents"][0]
    assert context.shape[0] == 128 > source_frames
    torch.testing.assert_close(context[:source_frames, :C], expected, rtol=0, atol=1e-6)
    silence = engine.silence_latent[0]
    torch.testing.assert_close(context[source_frames:, :C], silence[source_frames:128], rtol=0, atol=0)
    assert torch.equal(context[:source_frames, C:], torch.ones(source_frames, C))
    assert torch.equal(context[source_frames:, C:], torch.zeros(128 - source_frames, C))
    assert audio.shape[-1] == 3 * 48000


def test_lego_explicit_window_keeps_source_everywhere_and_generates_only_inside(
    engine_upstream_base, source_wav, tmp_path
):
    engine = engine_upstream_base
    with TransformerSpy(engine) as spy:
        _, audio = generate(
            engine,
            tmp_path,
            task_type="lego",
            src_audio=source_wav,
            chunk_mask_mode="explicit",
            seed=2,
            batch_size=1,
            inference_steps=2,
            repainting_start=1.0,
            repainting_end=3.0,
        )
    context = spy.calls[0]["context_latents"][0]
    expected = _source_latents(engine, source_wav)
    torch.testing.assert_close(context[:, :C], expected, rtol=0, atol=1e-6)  # nothing silenced
    mask = context[:, C]
    assert torch.equal(mask[25:75], torch.ones(50))
    assert torch.equal(mask[:25], torch.zeros(25)) and torch.equal(mask[75:], torch.zeros(75))
    # Outside the window (beyond a 10-frame fade) the stem is silent; inside it is not.
    fade = 10 * HOP
    assert np.abs(audio[0, :, : 25 * HOP - fade]).max() == 0.0
    assert np.abs(audio[0, :, 75 * HOP + fade :]).max() == 0.0
    assert np.abs(audio[0, :, 25 * HOP : 75 * HOP]).max() > 0.1


def test_repaint_silences_only_its_window(engine_upstream_base, source_wav, tmp_path):
    engine = engine_upstream_base
    with TransformerSpy(engine) as spy:
        generate(
            engine,
            tmp_path,
            task_type="repaint",
            src_audio=source_wav,
            chunk_mask_mode="explicit",
            seed=2,
            batch_size=1,
            inference_steps=2,
            repainting_start=1.0,
            repainting_end=3.0,
        )
    context = spy.calls[0]["context_latents"][0]
    expected = _source_latents(engine, source_wav)
    silence = engine.silence_latent[0]
    torch.testing.assert_close(context[25:75, :C], silence[25:75], rtol=0, atol=0)
    torch.testing.assert_close(context[:25, :C], expected[:25], rtol=0, atol=1e-6)
    torch.testing.assert_close(context[75:, :C], expected[75:], rtol=0, atol=1e-6)
    assert torch.equal(context[25:75, C], torch.ones(50))
    assert context[:, C].sum() == 50


def lego_window(engine, out, **window):
    """A lego of the 6 s source with the given window (seed 1, one take)."""
    return generate(
        engine, out, task_type="lego", src_audio=window.pop("src"), seed=1, batch_size=1, **window
    )


def test_lego_window_outside_source_is_a_clear_error(engine_upstream_base, source_wav, tmp_path):
    """A window that starts past the 6 s source and ends with it (no repainting_end) is empty."""
    with pytest.raises(ValueError, match="outside"):
        lego_window(engine_upstream_base, tmp_path, src=source_wav, repainting_start=7.0)


def test_lego_window_past_the_source_pads_it_with_silence(engine_upstream_base, source_wav, tmp_path):
    """Upstream outpaints: a window ending past the 6 s source pads it with silence up to
    repainting_end, so the stem is 9 s (patches/0043)."""
    _, audio = lego_window(
        engine_upstream_base, tmp_path, src=source_wav, repainting_start=7.0, repainting_end=9.0
    )
    assert audio.shape[-1] == 9 * 48000


def test_lego_on_turbo_is_refused_before_any_work(engine_upstream_turbo, source_wav, tmp_path):
    with TransformerSpy(engine_upstream_turbo) as spy, pytest.raises(ValueError, match="base or SFT"):
        generate(engine_upstream_turbo, tmp_path, task_type="lego", src_audio=source_wav, seed=1)
    assert spy.calls == []
    assert not list(tmp_path.iterdir())


def test_lego_refuses_audio_codes():
    from pydantic import ValidationError

    from acestep import GenerationRequest

    with pytest.raises(ValidationError, match="audio codes cannot replace the source"):
        GenerationRequest(task_type="lego", src_audio="song.wav", audio_code_string="<|audio_code_1|>")
