"""The sampler's request fields: solver, guidance variant, velocity smoothing, DCW, retake and the
latent and waveform shaping after sampling. ``GenerationRequest`` inherits them.

Names, defaults and allowed values follow upstream ACE-Step 1.5's ``generate_music`` and its
``/release_task`` model; the bounds here sit above the ranges upstream's UI offers (its REST model
leaves most of them open) and are declared once: the field table and the UI read them from here.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from acestep.errors import shown
from acestep.tasks import MAX_DURATION_S, MAX_NAME_CHARS, MAX_SEED_CHARS

SAMPLER_MODES = ("euler", "heun")  # first-order, or the second-order predictor-corrector
INFER_METHODS = ("ode", "sde")  # deterministic flow steps, or re-noised (stochastic) steps
# The classifier-free-guidance styles and the parameters each one takes (guidance_params).
GUIDANCE_VARIANTS = {
    "apg_classic": ("eta", "norm_threshold", "momentum"),
    "cfg": (),
    "adg": ("angle_clip",),
    "adg_w_norm": ("angle_clip",),
    "adg_wo_clip": (),
}
DEFAULT_GUIDANCE = "apg_classic"
ADG_VARIANTS = frozenset({"adg", "adg_w_norm", "adg_wo_clip"})  # what use_adg=true asks for
MAX_GUIDANCE_PARAM = 100.0  # |value| of any guidance parameter
# DCW (wavelet-domain differential correction): which bands it corrects, and the wavelet bases
# accepted (PyWavelets names of the orthogonal families; db1 is haar).
DCW_MODES = ("low", "high", "double", "pix")
DCW_WAVELETS = (
    "haar",
    *(f"db{n}" for n in range(2, 9)),
    *(f"sym{n}" for n in range(2, 9)),
    *(f"coif{n}" for n in range(1, 6)),
)
MAX_DCW_SCALER = 1.0  # upstream's UI goes to 0.2 (low band) and 0.1 (high band)
MAX_VELOCITY_NORM = 100.0  # upstream's UI goes to 5; 0 is off
MAX_LATENT_SHIFT = 5.0  # |shift|; upstream's UI goes to 0.2
MAX_LATENT_RESCALE = 10.0  # upstream's UI goes from 0.5 to 1.5; 0 would silence the latents
SEED_LIST_RE = re.compile(r"\s*-?\d+(\.0*)?(\s*,\s*-?\d+(\.0*)?)*\s*,?\s*")
SeedList = Annotated[str, StringConstraints(max_length=MAX_SEED_CHARS)]
ParamName = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
# Fields whose value only matters while another one switches their feature on (a note says so).
DCW_KNOBS = ("dcw_mode", "dcw_scaler", "dcw_high_scaler", "dcw_wavelet")
GUIDANCE_KNOBS = ("guidance_variant", "guidance_params", "use_adg", "cfg_interval_start", "cfg_interval_end")


def seed_value(name: str, value: object, empty: object) -> int | str | object:
    """A seed as a request keeps it: an integer, or a comma list of integers as text; ``empty``
    for None or blank text."""
    if value is None:
        return empty
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if not text:
        return empty
    if len(text) > MAX_SEED_CHARS:
        raise ValueError(f"{name} must be at most {MAX_SEED_CHARS} characters, got {len(text)}")
    if not SEED_LIST_RE.fullmatch(text):
        raise ValueError(
            f"{name} must be an integer or a comma-separated list of integers, got {shown(value)}"
        )
    return text


def one_of(values: tuple[str, ...] | dict[str, Any]) -> dict[str, Any]:
    """A choice field's allowed values, for its JSON schema (REST docs and MCP tool schemas)."""
    return {"enum": list(values)}


def choice(name: str, value: object, allowed: tuple[str, ...] | dict[str, Any]) -> str:
    """``value`` as one of ``allowed`` (case and spaces aside), or a ValueError naming the field."""
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {shown(value)}")
    return text


class SamplerFields(BaseModel):
    """How the diffusion sampler runs and how its latents are shaped before and after decoding."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    sampler_mode: str = Field("euler", max_length=MAX_NAME_CHARS, json_schema_extra=one_of(SAMPLER_MODES))
    infer_method: str = Field("ode", max_length=MAX_NAME_CHARS, json_schema_extra=one_of(INFER_METHODS))
    velocity_norm_threshold: float = Field(0.0, ge=0.0, le=MAX_VELOCITY_NORM)  # 0: off
    velocity_ema_factor: float = Field(0.0, ge=0.0, le=1.0)  # 0: off
    # Guidance for base and SFT models: a variant and its parameters; use_adg is upstream's older
    # switch for adaptive dual guidance (the "adg" variant).
    use_adg: bool = False
    guidance_variant: str = Field(
        DEFAULT_GUIDANCE, max_length=MAX_NAME_CHARS, json_schema_extra=one_of(GUIDANCE_VARIANTS)
    )
    guidance_params: dict[ParamName, float] | None = Field(None, max_length=4)
    # None: the model's own default (on for turbo, off for base and SFT); the engine decides.
    dcw_enabled: bool | None = None
    dcw_mode: str = Field("double", max_length=MAX_NAME_CHARS, json_schema_extra=one_of(DCW_MODES))
    dcw_scaler: float = Field(0.05, ge=0.0, le=MAX_DCW_SCALER)  # the low band (or the only one)
    dcw_high_scaler: float = Field(0.02, ge=0.0, le=MAX_DCW_SCALER)  # the high band, "double" only
    dcw_wavelet: str = Field("haar", max_length=MAX_NAME_CHARS, json_schema_extra=one_of(DCW_WAVELETS))
    # Retake: a variation of a take, its noise blended with noise from retake_seed.
    retake_seed: int | SeedList | None = None
    retake_variance: float = Field(0.0, ge=0.0, le=1.0)
    # Applied to the DiT's latents before the VAE decodes them, then fades on the waveform.
    latent_shift: float = Field(0.0, ge=-MAX_LATENT_SHIFT, le=MAX_LATENT_SHIFT)
    latent_rescale: float = Field(1.0, gt=0.0, le=MAX_LATENT_RESCALE)
    fade_in_duration: float = Field(0.0, ge=0.0, le=MAX_DURATION_S)
    fade_out_duration: float = Field(0.0, ge=0.0, le=MAX_DURATION_S)

    @field_validator("sampler_mode", mode="before")
    @classmethod
    def _sampler(cls, value: object) -> str:
        return choice("sampler_mode", value, SAMPLER_MODES)

    @field_validator("infer_method", mode="before")
    @classmethod
    def _infer_method(cls, value: object) -> str:
        return choice("infer_method", value, INFER_METHODS)

    @field_validator("guidance_variant", mode="before")
    @classmethod
    def _guidance(cls, value: object) -> str:
        return choice("guidance_variant", value, GUIDANCE_VARIANTS)

    @field_validator("dcw_mode", mode="before")
    @classmethod
    def _dcw_mode(cls, value: object) -> str:
        return choice("dcw_mode", value, DCW_MODES)

    @field_validator("dcw_wavelet", mode="before")
    @classmethod
    def _dcw_wavelet(cls, value: object) -> str:
        return choice("dcw_wavelet", value, DCW_WAVELETS)

    @field_validator("retake_seed", mode="before")
    @classmethod
    def _retake_seed(cls, value: object) -> object:
        return seed_value("retake_seed", value, None)

    @field_validator("guidance_params", mode="before")
    @classmethod
    def _guidance_params(cls, value: object) -> object:
        if value is None or value == {}:
            return None
        if not isinstance(value, dict):
            raise ValueError(f"guidance_params must be an object of numbers, got {shown(value)}")
        for key, number in value.items():
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise ValueError(f"guidance_params[{shown(key)}] must be a number, got {shown(number)}")
            if not (math.isfinite(number) and abs(number) <= MAX_GUIDANCE_PARAM):
                raise ValueError(f"guidance_params[{shown(key)}] must be within ±{MAX_GUIDANCE_PARAM:g}")
        return value

    @model_validator(mode="after")
    def _sampler_cross_fields(self) -> SamplerFields:
        if self.guidance_params:
            known = GUIDANCE_VARIANTS[self.guidance]  # use_adg's "adg" counts
            unknown = sorted(set(self.guidance_params) - set(known))
            if unknown:
                takes = ", ".join(known) if known else "no parameters"
                raise ValueError(
                    f"guidance_params {shown(unknown)} are not parameters of guidance_variant "
                    f"{self.guidance!r} (it takes {takes})"
                )
        explicit = "guidance_variant" in self.model_fields_set
        if self.use_adg and explicit and self.guidance_variant not in ADG_VARIANTS:
            raise ValueError(
                f"use_adg asks for adaptive dual guidance, and guidance_variant names "
                f"{self.guidance_variant!r}; send one of them"
            )
        return self

    @property
    def guidance(self) -> str:
        """The guidance variant this request asks for: use_adg picks "adg" unless a variant is named."""
        if self.use_adg and "guidance_variant" not in self.model_fields_set:
            return "adg"
        return self.guidance_variant

    def sampling_notes(self, retake_seed_used: bool = False) -> list[str]:
        """Fields sent that change nothing with the rest of the request as it is;
        ``retake_seed_used``: a flow edit draws its noise from it, whatever the variance."""
        sent = self.model_fields_set
        notes = []
        if self.retake_seed is not None and self.retake_variance == 0.0 and not retake_seed_used:
            notes.append("retake_seed has no effect while retake_variance is 0")
        knobs = [name for name in DCW_KNOBS if name in sent]
        if self.dcw_enabled is False and knobs:
            notes.append(f"{', '.join(knobs)}: no effect while dcw_enabled is false")
        if "dcw_high_scaler" in sent and self.dcw_mode != "double" and self.dcw_enabled is not False:
            notes.append(f"dcw_high_scaler is used by dcw_mode 'double' only, not {self.dcw_mode!r}")
        return notes
