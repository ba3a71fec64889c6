"""The Generate tab's "Advanced sampling" and "Edit" accordions: one control per sampler or editing
field of the request, its range and choices read from the request's own declaration
(``acestep.request_sampling``, ``acestep.request_edits``). Only values moved off their default reach
the request, so a job's notes name only what the user changed.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from acestep.request import GenerationRequest
from acestep.request_edits import CHUNK_MASK_MODES, REPAINT_MODES
from acestep.request_sampling import DCW_MODES, DCW_WAVELETS, GUIDANCE_VARIANTS, INFER_METHODS, SAMPLER_MODES

SAMPLER_FIELDS = (
    "sampler_mode", "infer_method", "guidance_variant", "use_adg", "guidance_params",
    "velocity_norm_threshold", "velocity_ema_factor", "dcw_enabled", "dcw_mode", "dcw_scaler",
    "dcw_high_scaler", "dcw_wavelet", "latent_shift", "latent_rescale", "fade_in_duration",
    "fade_out_duration",
)  # fmt: skip
EDIT_FIELDS = (
    "retake_seed", "retake_variance", "cover_noise_strength", "repaint_mode", "repaint_strength",
    "repaint_latent_crossfade_frames", "repaint_wav_crossfade_sec", "chunk_mask_mode",
    "flow_edit_morph", "flow_edit_source_caption", "flow_edit_source_lyrics", "flow_edit_n_min",
    "flow_edit_n_max", "flow_edit_n_avg",
)  # fmt: skip
# The Generate handler receives the controls in this order, after the LoRA inputs.
UI_FIELDS = SAMPLER_FIELDS + EDIT_FIELDS
CHOICES = {
    "sampler_mode": SAMPLER_MODES,
    "infer_method": INFER_METHODS,
    "guidance_variant": tuple(GUIDANCE_VARIANTS),
    "dcw_mode": DCW_MODES,
    "dcw_wavelet": DCW_WAVELETS,
    "repaint_mode": REPAINT_MODES,
    "chunk_mask_mode": CHUNK_MASK_MODES,
}
DCW_SWITCH = {"auto": None, "on": True, "off": False}  # dcw_enabled: auto is the model's own default
TEXT_FIELDS = frozenset(
    {"retake_seed", "guidance_params", "flow_edit_source_caption", "flow_edit_source_lyrics"}
)


def bounds(name: str, step: float) -> tuple[float | None, float | None]:
    """A request field's range as a control's (low, high): a ``gt`` bound becomes the least value
    above it on the control's ``step``."""
    low = high = None
    for bound in GenerationRequest.model_fields[name].metadata:  # annotated_types Ge, Gt, Le
        if hasattr(bound, "ge"):
            low = bound.ge
        elif hasattr(bound, "gt"):
            low = bound.gt + step  # the least value above it
        elif hasattr(bound, "le"):
            high = bound.le
    return low, high


def _control(name: str, text: dict) -> Any:
    field = GenerationRequest.model_fields[name]
    label, elem_id = text.get(name, name), f"gen-{name.replace('_', '-')}"
    if name == "dcw_enabled":
        return gr.Dropdown(list(DCW_SWITCH), value="auto", label=label, elem_id=elem_id)
    if name in CHOICES:
        return gr.Dropdown(list(CHOICES[name]), value=field.default, label=label, elem_id=elem_id)
    if name in TEXT_FIELDS:
        lines = 1 if name in ("retake_seed", "guidance_params") else 2
        return gr.Textbox(value="", label=label, lines=lines, elem_id=elem_id)  # "": optional in the API
    if field.annotation is bool:
        return gr.Checkbox(field.default, label=label, elem_id=elem_id)
    step = 1 if field.annotation is int else 0.01
    low, high = bounds(name, step)
    return gr.Slider(low, high, value=field.default, step=step, label=label, elem_id=elem_id)


def accordions(text: dict) -> list:
    """The two accordions' controls, in ``UI_FIELDS`` order."""
    controls = {}
    with gr.Accordion(text["sampling_title"], open=False, elem_id="gen-sampling"):
        with gr.Row():
            controls |= {name: _control(name, text) for name in SAMPLER_FIELDS[:5]}
        with gr.Row():
            controls |= {name: _control(name, text) for name in SAMPLER_FIELDS[5:12]}
        with gr.Row():
            controls |= {name: _control(name, text) for name in SAMPLER_FIELDS[12:]}
    with gr.Accordion(text["edit_title"], open=False, elem_id="gen-edit"):
        with gr.Row():
            controls |= {name: _control(name, text) for name in EDIT_FIELDS[:3]}
        with gr.Row():
            controls |= {name: _control(name, text) for name in EDIT_FIELDS[3:8]}
        with gr.Row():
            controls |= {name: _control(name, text) for name in EDIT_FIELDS[8:]}
    return [controls[name] for name in UI_FIELDS]


def request_values(values: tuple | list) -> dict[str, Any]:
    """The request fields the controls set: those moved off the request's default. API clients
    that send fewer inputs leave the rest at their defaults."""
    out: dict[str, Any] = {}
    for name, value in zip(UI_FIELDS, values, strict=False):
        if name == "dcw_enabled":
            value = DCW_SWITCH.get(str(value), value)
        elif name in TEXT_FIELDS and isinstance(value, str) and not value.strip():
            value = None
        elif name == "guidance_params" and isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):  # deep nesting exhausts the parser's recursion
                example = '{"eta": 0.5}'
                raise gr.Error(
                    f"guidance_params must be a JSON object, e.g. {example}: {value[:80]!r}"
                ) from None
        if value is not None and value != GenerationRequest.model_fields[name].default:
            out[name] = value
    return out
