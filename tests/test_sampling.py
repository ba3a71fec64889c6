"""The sampler's pieces against their definitions (docs/generation.md): velocity clamp and
smoothing, DCW's wavelet correction (checked against PyWavelets' own transform), the guidance
variants, and the loop's solvers on a velocity field whose exact flow is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pywt
import torch

from acestep.engine.sampling import Condition, Guidance, SamplerSettings, denoise
from acestep.engine.sampling.dcw import DcwSettings, correct
from acestep.engine.sampling.guidance import _cfg
from acestep.engine.sampling.velocity import clamp_velocity, smooth_velocity
from acestep.engine.seeds import retake_blend


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_clamp_holds_the_velocity_below_threshold_times_the_latent_norm():
    x, v = _randn(2, 8, 4), 10 * _randn(2, 8, 4, seed=1)
    clamped = clamp_velocity(v, x, 0.5)
    for item in range(2):
        ratio = clamped[item].norm() / x[item].norm()
        assert ratio == pytest.approx(0.5, rel=1e-5)
    small = 0.01 * v
    assert torch.equal(clamp_velocity(small, x, 0.5), small)  # already below: unchanged
    assert torch.equal(clamp_velocity(v, x, 0.0), v)  # 0 is off


def test_smoothing_is_an_exponential_average_with_the_previous_velocity():
    v, previous = _randn(1, 4, 2), _randn(1, 4, 2, seed=1)
    assert torch.allclose(smooth_velocity(v, previous, 0.25), 0.75 * v + 0.25 * previous)
    assert torch.equal(smooth_velocity(v, None, 0.25), v)
    assert torch.equal(smooth_velocity(v, previous, 0.0), v)


def _pywt_band_correction(x, y, s_low, s_high, wavelet):
    """The same correction computed with PyWavelets on numpy (float64), along T of [B, T, C]."""
    xn, yn = x.double().numpy(), y.double().numpy()
    x_low, x_high = pywt.dwt(xn, wavelet, mode="zero", axis=1)
    y_low, y_high = pywt.dwt(yn, wavelet, mode="zero", axis=1)
    x_low = x_low + s_low * (x_low - y_low)
    x_high = x_high + s_high * (x_high - y_high)
    return pywt.idwt(x_low, x_high, wavelet, mode="zero", axis=1)[:, : x.shape[1]]


@pytest.mark.parametrize("wavelet", ["haar", "db4", "sym8"])
@pytest.mark.parametrize("frames", [40, 41])
@pytest.mark.parametrize("mode", ["low", "high", "double"])
def test_dcw_bands_match_pywavelets(mode, frames, wavelet):
    x, y = _randn(2, frames, 3), _randn(2, frames, 3, seed=1)
    settings = DcwSettings(mode, scaler=0.05, high_scaler=0.02, wavelet=wavelet)
    t = 0.75
    low, high = {"low": (t * 0.05, 0.0), "high": (0.0, (1 - t) * 0.05), "double": (t * 0.05, (1 - t) * 0.02)}[
        mode
    ]
    expected = _pywt_band_correction(x, y, low, high, wavelet)
    got = correct(x, y, t, settings)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)  # float32 ptwt vs float64 PyWavelets
    assert not torch.allclose(got, x)  # it did correct


def test_dcw_pix_and_zero_strengths():
    x, y = _randn(1, 10, 2), _randn(1, 10, 2, seed=1)
    pix = DcwSettings("pix", 0.1, 0.0, "haar")
    assert torch.allclose(correct(x, y, 0.3, pix), x + 0.1 * (x - y))
    assert torch.equal(correct(x, y, 0.0, DcwSettings("low", 0.05, 0.0, "haar")), x)  # t = 0: no low band
    assert not DcwSettings("double", 0.0, 0.0, "haar").active
    assert DcwSettings("double", 0.0, 0.02, "haar").active


def test_dcw_keeps_half_precision_dtypes():
    x, y = _randn(1, 16, 2).half(), _randn(1, 16, 2, seed=1).half()
    assert correct(x, y, 0.5, DcwSettings("double", 0.05, 0.02, "haar")).dtype == torch.float16


def _guidance(variant: str, scale: float = 4.0, **params: float) -> Guidance:
    return Guidance(scale, (0.0, 1.0), torch.zeros(1, 1, 4), variant, params)


def test_cfg_and_the_apg_corrector_are_plain_cfg():
    cond, uncond, x = _randn(1, 6, 4), _randn(1, 6, 4, seed=1), _randn(1, 6, 4, seed=2)
    expected = uncond + 4.0 * (cond - uncond)
    assert torch.allclose(_guidance("cfg").combine(cond, uncond, x, 0.5), expected)
    apg = _guidance("apg_classic")
    assert torch.allclose(apg.combine(cond, uncond, x, 0.5, corrector=True), expected)
    assert apg._momentum is None  # the corrector leaves APG's momentum alone


def test_apg_adds_only_the_part_orthogonal_to_the_conditional_velocity():
    cond, uncond = _randn(1, 6, 4), _randn(1, 6, 4, seed=1)
    guided = _guidance("apg_classic", norm_threshold=0.0, momentum=0.0).combine(cond, uncond, cond, 0.5)
    update = guided - cond
    # Orthogonal to cond along the time axis (norm_dim 1), channel by channel.
    assert torch.allclose((update * cond).sum(dim=1), torch.zeros(1, 4), atol=1e-5)


@pytest.mark.parametrize("variant", ["adg", "adg_w_norm", "adg_wo_clip"])
def test_adg_with_equal_halves_returns_the_conditional_velocity(variant):
    cond, x = _randn(1, 6, 4), _randn(1, 6, 4, seed=2)
    guided = _guidance(variant).combine(cond, cond.clone(), x, 0.6)
    assert torch.allclose(guided, cond, atol=1e-4)


def test_adg_turns_toward_the_condition_and_clips_the_angle():
    cond, uncond, x = _randn(1, 6, 4), _randn(1, 6, 4, seed=1), _randn(1, 6, 4, seed=2)
    clipped = _guidance("adg", scale=50.0).combine(cond, uncond, x, 0.6)
    unclipped = _guidance("adg_wo_clip", scale=50.0).combine(cond, uncond, x, 0.6)
    assert torch.isfinite(clipped).all() and not torch.allclose(clipped, unclipped)
    assert torch.allclose(  # the corrector at t = 0 falls back to CFG (ADG divides by t)
        _guidance("adg").combine(cond, uncond, x, 0.0, corrector=True), uncond + 4.0 * (cond - uncond)
    )


class LinearField(torch.nn.Module):
    """v(x, t) = a * x + b: a velocity field whose exact flow is known; counts its evaluations."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b, self.calls = a, b, []

    def forward(self, hidden_states, timestep, **_):
        self.calls.append(float(timestep[0]))
        return (self.a * hidden_states + self.b,)


def _condition(frames: int = 4) -> Condition:
    return Condition(torch.zeros(1, 2, 3), torch.zeros(1, frames, 2))


def _exact(x1: torch.Tensor, a: float, b: float, t_from: float, t_to: float) -> torch.Tensor:
    # dx/dt = a x + b  ->  x(t) = (x1 + b/a) e^{a (t - t_from)} - b/a
    return (x1 + b / a) * math.exp(a * (t_to - t_from)) - b / a


def test_heun_is_second_order_where_euler_is_first():
    schedule = [1.0 - i / 16 for i in range(16)]
    x1 = _randn(1, 4, 2).double()
    exact = _exact(x1, 0.8, 0.3, 1.0, 0.0)
    base = SamplerSettings(final_jump=False)
    euler = denoise(LinearField(0.8, 0.3), x1, schedule, _condition(), base)
    heun = denoise(
        LinearField(0.8, 0.3), x1, schedule, _condition(), SamplerSettings(heun=True, final_jump=False)
    )
    euler_error, heun_error = (euler - exact).abs().max(), (heun - exact).abs().max()
    assert heun_error < euler_error / 20


def test_heun_evaluates_twice_per_step_but_once_on_turbos_final_jump():
    schedule = [1.0, 0.75, 0.5, 0.25]
    turbo, base = LinearField(0.5, 0.0), LinearField(0.5, 0.0)
    denoise(turbo, _randn(1, 4, 2), schedule, _condition(), SamplerSettings(heun=True, final_jump=True))
    denoise(base, _randn(1, 4, 2), schedule, _condition(), SamplerSettings(heun=True, final_jump=False))
    assert turbo.calls == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    assert base.calls == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0]


def test_sde_draws_its_noise_from_the_given_source_only():
    schedule = [1.0, 0.5]
    drawn = []

    def fresh_noise(generator=torch.Generator().manual_seed(7)):
        drawn.append(torch.randn(1, 4, 2, generator=generator))
        return drawn[-1]

    settings = SamplerSettings(sde=True, final_jump=True)
    x1 = _randn(1, 4, 2)
    torch.manual_seed(0)
    out = denoise(LinearField(0.5, 0.1), x1, schedule, _condition(), settings, fresh_noise=fresh_noise)
    assert len(drawn) == 1  # step 1 re-noises to t = 0.5; turbo's last step jumps to x0
    clean = x1 - (0.5 * x1 + 0.1) * 1.0
    x_half = 0.5 * drawn[0] + 0.5 * clean
    assert torch.allclose(out, x_half - (0.5 * x_half + 0.1) * 0.5)
    with pytest.raises(ValueError, match="fresh_noise"):
        denoise(LinearField(0.5, 0.1), x1, schedule, _condition(), settings)


def test_retake_blend_keeps_the_take_at_zero_and_is_the_retake_at_one():
    noise, retake = _randn(1, 4, 2), _randn(1, 4, 2, seed=1)
    assert torch.equal(retake_blend(noise, retake, 0.0), noise)
    assert torch.allclose(retake_blend(noise, retake, 1.0), retake, atol=1e-6)
    half = retake_blend(noise, retake, 0.5)
    assert torch.allclose(half, math.cos(math.pi / 4) * noise + math.sin(math.pi / 4) * retake)


def test_guidance_interval_picks_the_conditional_half_outside_it():
    g = Guidance(7.0, (0.2, 0.8), torch.zeros(1, 1, 3), "cfg")
    assert g.applies_at(0.5) and g.applies_at(0.2) and not g.applies_at(0.9)


def test_cfg_helper_is_the_textbook_formula():
    assert torch.equal(_cfg(torch.ones(1), torch.zeros(1), 3.0), torch.full((1,), 3.0))
