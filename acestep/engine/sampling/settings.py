"""How one generation samples: the request's sampler fields resolved against the model variant."""

from __future__ import annotations

from dataclasses import dataclass

from acestep.checkpoints.variants import Variant
from acestep.engine.sampling.dcw import DcwSettings
from acestep.request import GenerationRequest
from acestep.request_sampling import DCW_KNOBS, DEFAULT_GUIDANCE, GUIDANCE_KNOBS


@dataclass(frozen=True)
class SamplerSettings:
    heun: bool = False
    sde: bool = False
    velocity_norm_threshold: float = 0.0
    velocity_ema_factor: float = 0.0
    dcw: DcwSettings | None = None
    # Turbo's last step jumps straight to x0 with one evaluation (no Heun corrector there);
    # base and SFT models evaluate the corrector at t = 0 too.
    final_jump: bool = True

    @classmethod
    def resolve(
        cls, request: GenerationRequest, variant: Variant, flow_edit: bool = False
    ) -> tuple[SamplerSettings, list[str]]:
        """The settings, and notes on what the request asked for that was changed."""
        notes = []
        heun = request.sampler_mode == "heun"
        sde = request.infer_method == "sde"
        if heun and sde:
            notes.append("sampler_mode 'heun' works with infer_method 'ode' only; the SDE steps used Euler")
            heun = False
        enabled = variant.is_turbo if request.dcw_enabled is None else request.dcw_enabled
        notes += _model_notes(request, variant)
        if flow_edit and (heun or sde or enabled or request.guidance != DEFAULT_GUIDANCE):
            notes.append("flow edit samples with Euler ODE steps, APG guidance and no DCW, as upstream")
            heun, sde, enabled = False, False, False
        dcw = None
        if enabled:
            dcw = DcwSettings(
                request.dcw_mode, request.dcw_scaler, request.dcw_high_scaler, request.dcw_wavelet
            )
            dcw = dcw if dcw.active else None
        settings = cls(
            heun=heun,
            sde=sde,
            velocity_norm_threshold=request.velocity_norm_threshold,
            velocity_ema_factor=request.velocity_ema_factor,
            dcw=dcw,
            final_jump=variant.is_turbo,
        )
        return settings, notes


def _model_notes(request: GenerationRequest, variant: Variant) -> list[str]:
    """Fields sent that this model's defaults leave idle (the request alone cannot tell)."""
    sent = request.model_fields_set
    notes = []
    guidance = [name for name in ("guidance_scale", *GUIDANCE_KNOBS) if name in sent]
    if guidance and not variant.uses_guidance:
        notes.append(
            f"{', '.join(guidance)}: no effect on {variant.name} models (they sample without guidance)"
        )
    elif variant.uses_guidance and request.guidance_scale <= 1.0:
        idle = [name for name in GUIDANCE_KNOBS if name in sent]
        if idle:
            notes.append(f"{', '.join(idle)}: no effect while guidance_scale is 1 or less")
    dcw = [name for name in DCW_KNOBS if name in sent]
    if dcw and request.dcw_enabled is None and not variant.is_turbo:
        notes.append(
            f"{', '.join(dcw)}: no effect; DCW is off for {variant.name} models unless dcw_enabled is true"
        )
    return notes
