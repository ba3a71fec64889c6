"""Every task end to end, plus the upstream semantics placed around diffusers' modules."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from _util import TransformerSpy, generate

import acestep.engine.sampling.guidance as guidance_module
from acestep.engine.audio_io import AudioInputError, load_audio
from acestep.engine.schedules import turbo_schedule
from acestep.memory.limits import MemoryLimitError
from acestep.testing import TINY_LATENT_DIM, TINY_SILENCE_FRAMES, synthetic_audio

C = TINY_LATENT_DIM


@pytest.mark.parametrize("task", ["text2music", "repaint", "cover", "extract", "lego", "complete"])
def test_every_task_writes_48k_stereo(engine_diffusers_base, source_wav, tmp_path, task):
    fields = dict(
        task_type=task,
        caption="warm piano",
        lyrics="[verse]\nla la",
        seed=1,
        batch_size=1,
        inference_steps=3,
        audio_format="flac",
        track_name="drums" if task in ("lego", "extract") else None,
    )
    if task == "text2music":
        fields["audio_duration"] = 6.0
    else:
        fields["src_audio"] = source_wav
    result, audio = generate(engine_diffusers_base, tmp_path, **fields)
    info = sf.info(result.audio_paths[0])
    assert (info.samplerate, info.channels, info.format) == (48000, 2, "FLAC")
    assert audio.shape[-1] == 6 * 48000
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.5  # peak-normalised to -1 dBFS
    assert set(result.timings) >= {"audio_encode", "text_encode", "dit", "vae_decode", "total"}


def test_turbo_runs_the_requested_steps_with_the_exact_shift(engine_upstream_turbo, tmp_path):
    with TransformerSpy(engine_upstream_turbo) as spy:
        result, _ = generate(
            engine_upstream_turbo,
            tmp_path,
            caption="x",
            audio_duration=6,
            seed=1,
            batch_size=1,
            inference_steps=30,
            shift=2.5,
        )
    seen = [float(call["timestep"][0]) for call in spy.calls]
    assert seen == pytest.approx(turbo_schedule(20, 2.5), abs=1e-6)  # at most 20 steps, shift 2.5 as sent
    assert any("at most 20" in w for w in result.warnings)
    assert all(call["context_latents"].shape[0] == 1 for call in spy.calls)  # no CFG on turbo


def test_text2music_context_is_tiled_silence_for_long_targets(engine_upstream_turbo, tmp_path):
    seconds = 20.0  # 500 frames > the tiny silence latent's 400
    with TransformerSpy(engine_upstream_turbo) as spy:
        _, audio = generate(
            engine_upstream_turbo,
            tmp_path,
            caption="x",
            audio_duration=seconds,
            chunk_mask_mode="explicit",
            seed=1,
            batch_size=1,
        )
    context = spy.calls[0]["context_latents"][0]
    silence = engine_upstream_turbo.silence_latent[0]
    assert context.shape[0] == 500
    torch.testing.assert_close(context[:TINY_SILENCE_FRAMES, :C], silence, rtol=0, atol=0)
    torch.testing.assert_close(context[TINY_SILENCE_FRAMES:, :C], silence[:100], rtol=0, atol=0)
    assert torch.equal(context[:, C:], torch.ones(500, C))
    assert audio.shape[-1] == 500 * 1920


def test_short_request_is_padded_to_128_frames_but_returned_at_its_length(engine_upstream_turbo, tmp_path):
    with TransformerSpy(engine_upstream_turbo) as spy:
        _, audio = generate(
            engine_upstream_turbo, tmp_path, caption="x", audio_duration=2.0, seed=1, batch_size=1
        )
    assert spy.calls[0]["hidden_states"].shape[1] == 128
    assert audio.shape[-1] == 50 * 1920


def test_cfg_interval_uses_the_raw_timestep(engine_upstream_base, source_wav, tmp_path, monkeypatch):
    guided_at = []
    real = guidance_module.normalized_guidance

    def spy(**kwargs):
        guided_at.append(True)
        return real(**kwargs)

    monkeypatch.setattr(guidance_module, "normalized_guidance", spy)
    with TransformerSpy(engine_upstream_base) as calls:
        generate(
            engine_upstream_base,
            tmp_path,
            task_type="extract",
            src_audio=source_wav,
            seed=1,
            batch_size=1,
            inference_steps=8,
            shift=1.0,
            guidance_scale=7.0,
            cfg_interval_start=0.0,
            cfg_interval_end=0.5,
        )
    times = [float(c["timestep"][0]) for c in calls.calls]
    assert times == pytest.approx([1 - i / 8 for i in range(8)])
    assert len(guided_at) == sum(t <= 0.5 for t in times) == 4  # t = 0.5, 0.375, 0.25, 0.125


def test_cover_strength_switches_to_the_non_cover_condition(engine_upstream_turbo, source_wav, tmp_path):
    with TransformerSpy(engine_upstream_turbo) as spy:
        generate(
            engine_upstream_turbo,
            tmp_path,
            task_type="cover",
            src_audio=source_wav,
            seed=1,
            batch_size=1,
            audio_cover_strength=0.5,
        )
    contexts = [c["context_latents"][0] for c in spy.calls]
    states = [c["encoder_hidden_states"][0] for c in spy.calls]
    silence = engine_upstream_turbo.silence_latent[0]
    assert all(torch.equal(contexts[0], ctx) for ctx in contexts[:4])
    assert not torch.equal(contexts[0][:, :C], silence[:150])  # cover: the source's FSQ round trip
    for ctx in contexts[4:]:  # int(8 * 0.5) = 4 steps of cover, then text2music on silence
        torch.testing.assert_close(ctx[:, :C], silence[:150], rtol=0, atol=0)
    assert not torch.equal(states[3], states[4]) and torch.equal(states[4], states[7])


def test_audio_codes_set_the_length_and_replace_the_source(engine_upstream_turbo, source_wav, tmp_path):
    codes = "".join(f"<|audio_code_{i * 997 % 64000}|>" for i in range(40))  # 40 codes = 8 s
    result, audio = generate(
        engine_upstream_turbo,
        tmp_path,
        caption="x",
        audio_code_string=codes,
        seed=1,
        batch_size=1,
        src_audio=source_wav,
    )
    assert result.task_type == "cover"
    assert audio.shape[-1] == 200 * 1920
    assert any("source audio is not used" in w for w in result.warnings)


def test_bad_audio_inputs_are_clear_errors(engine_upstream_base, tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 2), dtype=np.float32), 48000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((48000, 2), dtype=np.float32), 48000)
    for path, message in (
        (empty, "empty"),
        (junk, "cannot read"),
        (tmp_path / "missing.wav", "not found"),
    ):
        with pytest.raises(AudioInputError, match=message):
            generate(engine_upstream_base, tmp_path / "out", task_type="lego", src_audio=str(path), seed=1)
    # A silent reference has no timbre to give (upstream fails it too); a silent source is silence
    # context since issue 21 (first-track lego: tests/test_rest_surface_flows.py).
    with pytest.raises(AudioInputError, match="reference audio is silent"):
        generate(engine_upstream_base, tmp_path / "out", reference_audio=str(silent), seed=1)


def test_overlong_source_is_refused(engine_upstream_base, tmp_path):
    long = tmp_path / "long.flac"
    sf.write(long, np.zeros((601 * 8000, 1), dtype=np.float32) + 0.1, 8000)
    # The tier's duration limit sees the file header first, before any audio is decoded.
    with pytest.raises(MemoryLimitError, match="source audio is 601.0 s, over the 600 s maximum"):
        generate(engine_upstream_base, tmp_path / "out", task_type="lego", src_audio=str(long), seed=1)
    with pytest.raises(AudioInputError, match="limit is 600"):
        load_audio(long)


def test_mono_and_other_rates_are_converted(engine_upstream_base, tmp_path):
    mono = tmp_path / "mono.wav"
    sf.write(mono, synthetic_audio(5.0, seed=3, sample_rate=44100, channels=1), 44100)
    _, audio = generate(
        engine_upstream_base,
        tmp_path / "out",
        task_type="extract",
        src_audio=str(mono),
        seed=1,
        batch_size=1,
        inference_steps=2,
    )
    assert audio.shape == (1, 2, 5 * 48000)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 96000])
def test_resampling_keeps_pitch_and_level(rate, tmp_path):
    """A 1 kHz tone at any input rate is a 1 kHz tone at 48 kHz, at the same level."""
    seconds = 2.0
    t = np.arange(int(seconds * rate)) / rate
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32), rate)
    wav = load_audio(path).numpy()
    assert wav.shape == (2, int(seconds * 48000)) and wav.dtype == np.float32
    middle = wav[0, 4800:-4800]  # away from the filter's edges
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(middle.size)))
    peak_hz = np.argmax(spectrum) * 48000 / middle.size
    assert abs(peak_hz - 1000.0) < 2.0
    assert abs(np.sqrt(np.mean(middle**2)) - 0.5 / np.sqrt(2)) < 0.01


def test_audio_io_does_not_need_torchaudio():
    """torchaudio's extension breaks on any torch build but its own; acestep must import without it."""
    code = (
        "import sys; sys.modules['torchaudio'] = None\n"  # any import of it now raises ImportError
        "import acestep.engine.audio_io, acestep.engine.engine\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_long_audio_decodes_in_tiles(engine_upstream_turbo, tmp_path):
    codec = engine_upstream_turbo.codec
    assert codec.vae.use_tiling and codec.vae.tile_latent_min_length <= 256
    _, audio = generate(
        engine_upstream_turbo, tmp_path, caption="x", audio_duration=30.0, seed=1, batch_size=1
    )
    assert audio.shape[-1] == 750 * 1920  # 750 frames > one 256-frame tile


def test_complete_keeps_the_full_source_and_mask(engine_upstream_base, source_wav, tmp_path):
    with TransformerSpy(engine_upstream_base) as spy:
        result, _ = generate(
            engine_upstream_base,
            tmp_path,
            task_type="complete",
            track_classes=["drums", "bass"],
            src_audio=source_wav,
            chunk_mask_mode="explicit",
            seed=1,
            batch_size=1,
            inference_steps=2,
            guidance_scale=1.0,
        )
    context = spy.calls[0]["context_latents"][0]
    expected = engine_upstream_base.codec.encode(load_audio(source_wav), torch.float32)[0]
    torch.testing.assert_close(context[:, :C], expected, rtol=0, atol=0)
    assert torch.equal(context[:, C:], torch.ones(150, C))
    assert result.metas["instruction"] == "Complete the input track with DRUMS | BASS:"


def test_reference_audio_is_deterministic_and_used(engine_upstream_turbo, tmp_path):
    ref = tmp_path / "ref.wav"
    sf.write(ref, synthetic_audio(12.0, seed=9), 48000)
    common = dict(caption="x", audio_duration=6, seed=4, batch_size=1)
    _, with_ref = generate(engine_upstream_turbo, tmp_path / "a", reference_audio=str(ref), **common)
    _, again = generate(engine_upstream_turbo, tmp_path / "b", reference_audio=str(ref), **common)
    _, without = generate(engine_upstream_turbo, tmp_path / "c", **common)
    np.testing.assert_array_equal(with_ref, again)
    assert not np.allclose(with_ref, without, atol=1e-3)


def test_silent_output_is_reported_as_a_failure(upstream_turbo, tmp_path):
    from acestep import AceStep, GenerationError

    engine = AceStep.from_pretrained(upstream_turbo, device="cpu")
    with torch.no_grad():  # a real model whose decoder outputs exact silence
        engine.components.vae.decoder.conv2.weight_g.zero_()
    with pytest.raises(GenerationError, match="silent"):
        generate(engine, tmp_path, caption="x", audio_duration=6, seed=1, batch_size=1)
    assert not list(tmp_path.glob("*.wav"))


@pytest.mark.parametrize(
    "audio_format, container, subtype",
    [
        ("wav", "WAV", "FLOAT"),
        ("flac", "FLAC", "PCM_16"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ],
)
def test_output_formats(engine_upstream_turbo, tmp_path, audio_format, container, subtype):
    result, audio = generate(
        engine_upstream_turbo,
        tmp_path,
        caption="x",
        audio_duration=6,
        seed=1,
        batch_size=1,
        audio_format=audio_format,
    )
    info = sf.info(result.audio_paths[0])
    assert (info.format, info.subtype, info.samplerate, info.channels) == (container, subtype, 48000, 2)
    if audio_format != "mp3":  # mp3 is lossy: its low-pass changes the peak of the tiny model's noise
        assert np.abs(audio).max() == pytest.approx(10 ** (-1 / 20), abs=1e-3)  # peak-normalised, -1 dBFS


def test_mp3_source_is_read(engine_upstream_base, tmp_path):
    mp3 = tmp_path / "song.mp3"
    sf.write(mp3, synthetic_audio(5.0, seed=2), 48000, format="MP3")
    _, audio = generate(
        engine_upstream_base,
        tmp_path / "out",
        task_type="lego",
        src_audio=mp3,
        seed=1,
        batch_size=1,
        inference_steps=2,
    )
    assert audio.shape[:2] == (1, 2) and abs(audio.shape[-1] - 5 * 48000) < 4800  # mp3 pads a few frames


def test_vae_encode_tiles_follow_the_device_policy(upstream_turbo, monkeypatch):
    from acestep import AceStep

    assert (
        AceStep.from_pretrained(upstream_turbo, device="cpu").codec.vae.tile_sample_min_length == 30 * 48000
    )
    monkeypatch.setenv("ACESTEP_VAE_ENCODE_CHUNK_SECONDS", "10")
    monkeypatch.setenv("ACESTEP_VAE_DECODE_CHUNK_SIZE", "64")
    vae = AceStep.from_pretrained(upstream_turbo, device="cpu").codec.vae
    assert vae.tile_sample_min_length == 10 * 48000
    assert vae.tile_latent_min_length == 64 and vae.tile_latent_overlap == 16


def test_codes_without_an_audio_tokenizer_are_a_clear_error(diffusers_turbo, source_wav, tmp_path):
    import shutil

    from acestep import AceStep

    root = tmp_path / "no_codec"
    shutil.copytree(diffusers_turbo, root)
    shutil.rmtree(root / "audio_tokenizer")
    shutil.rmtree(root / "audio_token_detokenizer")
    engine = AceStep.from_pretrained(root, device="cpu")
    for task in ("repaint", "cover"):
        with pytest.raises(ValueError, match="no audio tokenizer"):
            generate(
                engine,
                tmp_path / "out",
                task_type=task,
                src_audio=source_wav,
                audio_code_string="<|audio_code_3|>" * 30,
                seed=1,
            )
