"""Generation parity features through the engine (issue 22): turbo's defaults, retake, flow edit,
repaint modes, cover noise and output shaping, on the tiny random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from _util import TransformerSpy, generate

from acestep import GenerationRequest
from acestep.engine.sampling import Condition, SamplerSettings
from acestep.engine.sampling.dcw import DcwSettings
from acestep.engine.sampling.flow_edit import EditWindow, flow_edit

FAST = dict(caption="warm piano", audio_duration=3.0, seed=11, batch_size=1, enable_normalization=False)


def test_a_request_with_no_sampler_fields_samples_as_upstream_turbo(
    engine_upstream_turbo, engine_upstream_base
):
    request = GenerationRequest()
    turbo, _ = SamplerSettings.resolve(request, engine_upstream_turbo.variant)
    base, _ = SamplerSettings.resolve(request, engine_upstream_base.variant)
    assert turbo == SamplerSettings(dcw=DcwSettings("double", 0.05, 0.02, "haar"), final_jump=True)
    assert base == SamplerSettings(final_jump=False)  # DCW off for base and SFT
    assert request.chunk_mask_mode == "auto" and request.repaint_mode == "balanced"


def test_turbo_defaults_are_dcw_double_and_the_auto_chunk_mask(engine_upstream_turbo, tmp_path):
    with TransformerSpy(engine_upstream_turbo) as spy:
        _, default = generate(engine_upstream_turbo, tmp_path / "a", **FAST)
    channels = engine_upstream_turbo.codec.latent_dim
    assert torch.all(spy.calls[0]["context_latents"][..., channels:] == 2.0)  # auto: the model decides
    explicit = dict(
        dcw_enabled=True, dcw_mode="double", dcw_scaler=0.05, dcw_high_scaler=0.02, dcw_wavelet="haar"
    )
    _, same = generate(engine_upstream_turbo, tmp_path / "b", **FAST, **explicit)
    _, without = generate(engine_upstream_turbo, tmp_path / "c", **FAST, dcw_enabled=False)
    assert np.array_equal(default, same)
    assert np.abs(default - without).max() > 1e-3


def test_retake_varies_a_take_and_reproduces_it(engine_upstream_turbo, tmp_path):
    def take(name: str, **fields):
        return generate(engine_upstream_turbo, tmp_path / name, **FAST, **fields)

    result, first = take("a", retake_seed=5, retake_variance=0.5)
    _, again = take("b", retake_seed=5, retake_variance=0.5)
    _, other = take("c", retake_seed=6, retake_variance=0.5)
    _, plain = take("d")
    assert np.array_equal(first, again)  # the same (seed, retake seed) pair reproduces
    assert np.abs(first - other).max() > 1e-3  # another retake seed: another variation
    assert np.abs(first - plain).max() > 1e-3
    assert result.metas["retake_seeds"] == [5]
    noted, unchanged = take("e", retake_seed=5)
    assert np.array_equal(unchanged, plain)  # variance 0: the take itself, and a note says so
    assert any("retake_seed has no effect" in warning for warning in noted.warnings)


def test_flow_edit_with_the_same_text_keeps_the_source_latents(engine_upstream_base):
    torch.manual_seed(0)  # only for the test's own tensors
    encoder, context = torch.randn(1, 5, 32), torch.randn(1, 40, 16)
    other = Condition(torch.randn(1, 5, 32), context)
    source = torch.randn(1, 40, 8)
    generator = torch.Generator().manual_seed(1)

    def noise():
        return torch.randn(1, 40, 8, generator=generator)

    transformer = engine_upstream_base.components.transformer
    schedule = [1.0, 0.75, 0.5, 0.25]
    same = flow_edit(
        transformer,
        source,
        schedule,
        Condition(encoder, context),
        Condition(encoder, context),
        EditWindow(),
        noise,
    )
    # v_tar - v_src is 0 up to float rounding (z_tar = z_edit + z_src - x_src is z_src only in exact
    # arithmetic), so the source comes back to within float32's rounding.
    torch.testing.assert_close(same, source, rtol=0, atol=1e-5)
    moved = flow_edit(transformer, source, schedule, Condition(encoder, context), other, EditWindow(), noise)
    assert (moved - source).abs().max() > 1e-3
    # A window that ends early hands over to the target's own Euler steps.
    late = flow_edit(
        transformer, source, schedule, Condition(encoder, context), other, EditWindow(0.25, 0.5, 2), noise
    )
    assert late.shape == source.shape and not torch.equal(late, moved)


@pytest.mark.parametrize("task", ["text2music", "cover"])
def test_flow_edit_changes_the_source_toward_the_new_caption(
    engine_upstream_base, source_wav, tmp_path, task
):
    fields = dict(task_type=task, src_audio=str(source_wav), seed=3, batch_size=1, inference_steps=4)
    fields |= dict(caption="bright brass band", enable_normalization=False)
    edit = dict(flow_edit_morph=True, flow_edit_source_caption="soft piano", flow_edit_n_max=0.75)
    result, edited = generate(engine_upstream_base, tmp_path / "edit", **fields, **edit)
    _, plain = generate(engine_upstream_base, tmp_path / "plain", **fields, audio_duration=6.0)
    # The same text on both sides: the velocities cancel, so this is the source itself (decoded).
    same = edit | {"flow_edit_source_caption": fields["caption"]}
    _, kept = generate(engine_upstream_base, tmp_path / "kept", **fields, **same)
    assert edited.shape[-1] == kept.shape[-1] == 6 * 48000  # the source's length
    assert np.isfinite(edited).all() and np.abs(edited - plain).max() > 1e-3
    assert np.abs(edited - kept).max() > 1e-3  # not the source returned unchanged


def test_flow_edit_is_refused_on_turbo_and_needs_a_source(engine_upstream_turbo, source_wav, tmp_path):
    with pytest.raises(ValueError, match="needs a base or SFT model"):
        engine_upstream_turbo.check(
            GenerationRequest(task_type="text2music", src_audio=str(source_wav), flow_edit_morph=True)
        )
    with pytest.raises(ValueError, match="src_audio"):
        GenerationRequest(task_type="text2music", flow_edit_morph=True)
    assert not GenerationRequest(
        task_type="text2music", src_audio=str(source_wav), flow_edit_morph=True, thinking=True
    ).uses_lm  # upstream skips the LM for a flow edit


def _window_outside(audio: np.ndarray, start_s: float, end_s: float, margin_s: float = 0.1) -> np.ndarray:
    rate = 48000
    left = audio[..., : int((start_s - margin_s) * rate)]
    right = audio[..., int((end_s + margin_s) * rate) :]
    return np.concatenate([left, right], axis=-1)


def test_repaint_modes_keep_or_regenerate_the_outside(engine_upstream_turbo, source_wav, tmp_path):
    source, _ = sf.read(source_wav, dtype="float32", always_2d=True)
    outside_source = _window_outside(source.T, 2.0, 4.0)
    fields = dict(task_type="repaint", src_audio=str(source_wav), repainting_start=2.0, repainting_end=4.0)
    fields |= dict(seed=2, batch_size=1, enable_normalization=False, audio_format="flac")
    kept = {}
    for mode in ("conservative", "balanced", "aggressive"):
        _, audio = generate(engine_upstream_turbo, tmp_path / mode, repaint_mode=mode, **fields)
        kept[mode] = np.abs(_window_outside(audio[0], 2.0, 4.0) - outside_source).max()
        inside = audio[0][..., 2 * 48000 + 4800 : 4 * 48000 - 4800]
        assert np.abs(inside - source.T[..., 2 * 48000 + 4800 : 4 * 48000 - 4800]).max() > 1e-2  # regenerated
    assert kept["conservative"] < 1e-4 and kept["balanced"] < 1e-4  # the source, spliced back (16-bit)
    assert kept["aggressive"] > 1e-2  # no splice: the outside is the model's


def test_cover_noise_starts_down_the_schedule(engine_upstream_turbo, source_wav, tmp_path):
    fields = dict(task_type="cover", src_audio=str(source_wav), seed=4, batch_size=1)
    result, noised = generate(engine_upstream_turbo, tmp_path / "a", cover_noise_strength=0.5, **fields)
    plain_result, plain = generate(engine_upstream_turbo, tmp_path / "b", **fields)
    assert result.metas["steps"] < plain_result.metas["steps"] == 8
    assert result.metas["timesteps"][0] == pytest.approx(0.5)  # the table value nearest 1 - 0.5
    assert np.abs(noised - plain).max() > 1e-3


def test_output_shaping_fades_and_latent_rescale(engine_upstream_turbo, tmp_path):
    _, plain = generate(engine_upstream_turbo, tmp_path / "a", **FAST)
    _, faded = generate(
        engine_upstream_turbo, tmp_path / "b", **FAST, fade_in_duration=0.5, fade_out_duration=0.5
    )
    assert np.all(faded[..., 0] == 0) and np.all(faded[..., -1] == 0)
    middle = slice(48000, 2 * 48000)
    assert np.array_equal(faded[..., middle], plain[..., middle])  # fades touch only their ends
    _, shaped = generate(engine_upstream_turbo, tmp_path / "c", **FAST, latent_rescale=0.5, latent_shift=0.1)
    assert np.abs(shaped - plain).max() > 1e-3


@pytest.mark.parametrize(("task", "switches"), [("cover", True), ("cover-nofsq", True), ("repaint", False)])
def test_cover_strength_switches_covers_only(engine_upstream_turbo, source_wav, tmp_path, task, switches):
    fields = dict(task_type=task, src_audio=str(source_wav), seed=5, batch_size=1, audio_cover_strength=0.5)
    with TransformerSpy(engine_upstream_turbo) as spy:
        generate(engine_upstream_turbo, tmp_path, **fields)
    contexts = [call["context_latents"] for call in spy.calls]
    assert len(contexts) == 8
    assert all(torch.equal(contexts[0], c) for c in contexts[:4])  # int(8 * 0.5) steps as the task's own
    assert torch.equal(contexts[0], contexts[4]) is not switches  # then text2music's silence context


def test_the_engine_passes_the_guidance_variant_and_its_parameters(engine_upstream_base, tmp_path):
    """The parity test builds its own Guidance; this checks the engine's wiring from the request."""
    fields = dict(
        caption="x", audio_duration=3.0, seed=8, batch_size=1, inference_steps=3, guidance_scale=5.0
    )
    runs = {
        "apg": {},
        "apg-tight": {"guidance_params": {"norm_threshold": 0.1}},
        "cfg": {"guidance_variant": "cfg"},
        "adg": {"guidance_variant": "adg"},
        "use_adg": {"use_adg": True},
    }
    audio = {
        name: generate(engine_upstream_base, tmp_path / name, **fields, **extra)[1]
        for name, extra in runs.items()
    }
    assert np.array_equal(audio["adg"], audio["use_adg"])  # use_adg picks the adg variant
    different = ["apg", "apg-tight", "cfg", "adg"]
    for i, first in enumerate(different):
        for second in different[i + 1 :]:
            assert np.abs(audio[first] - audio[second]).max() > 1e-4, (first, second)
