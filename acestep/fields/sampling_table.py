"""The field table's sampler and editing entries (``acestep.request_sampling`` and
``acestep.request_edits`` declare the fields): upstream's REST aliases, kinds, bounds and the
``acestep generate`` flags. ``acestep.fields.table`` adds them to ``GENERATION``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from acestep.fields.spec import FieldSpec, Flag, Group, Kind
from acestep.request import GenerationRequest
from acestep.request_edits import (
    CHUNK_MASK_MODES,
    MAX_CROSSFADE_FRAMES,
    MAX_FLOW_EDIT_AVG,
    MAX_WAV_CROSSFADE_S,
    REPAINT_MODES,
)
from acestep.request_sampling import (
    DCW_MODES,
    DCW_WAVELETS,
    GUIDANCE_VARIANTS,
    INFER_METHODS,
    MAX_DCW_SCALER,
    MAX_LATENT_RESCALE,
    MAX_LATENT_SHIFT,
    MAX_VELOCITY_NORM,
    SAMPLER_MODES,
)
from acestep.tasks import MAX_DURATION_S


def _json_object(text: str) -> dict:
    """``--guidance-params``: a JSON object (its names and numbers are the request's to check)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise argparse.ArgumentTypeError(f"not JSON: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object such as '{{\"eta\": 0.5}}', not {text!r}")
    return value


_VARIANTS = GUIDANCE_VARIANTS.items()


def _default(name: str) -> Any:
    return GenerationRequest.model_fields[name].default


def _field(name: str, kind: Kind, *aliases: str, flag: str, help: str, **extra: Any) -> FieldSpec:
    """A request field of the same name and its flag; numbers and choices show their default."""
    options: dict[str, Any] = {"default": None, "help": help}
    choices = extra.get("choices")
    if kind == Kind.BOOL:
        options["action"] = "store_true"
    elif choices is not None:
        metavar = flag.upper().strip("-").replace("-", "_")
        options |= {"type": str.lower, "choices": choices, "metavar": metavar}
        options["help"] = f"{help}: %(choices)s (default {_default(name)})"
    elif kind in (Kind.INT, Kind.FLOAT):
        options["type"] = int if kind == Kind.INT else float
        options["help"] = f"{help} (default {_default(name)!r})"
    return FieldSpec(name, kind, Group.GENERATION, aliases, name, flag=Flag((flag,), options), **extra)


SAMPLER = (
    _field(
        "sampler_mode",
        Kind.STR,
        "samplerMode",
        flag="--sampler",
        help="the ODE solver: euler, or heun (second order, twice the model calls)",
        choices=SAMPLER_MODES,
    ),
    _field(
        "infer_method",
        Kind.STR,
        "inferMethod",
        flag="--infer-method",
        help="ode (deterministic steps) or sde (re-noised steps)",
        choices=INFER_METHODS,
    ),
    _field(
        "velocity_norm_threshold",
        Kind.FLOAT,
        "velocityNormThreshold",
        flag="--velocity-norm-threshold",
        help="cap each step's velocity at this multiple of the latent's norm (0: off; try 2)",
        bounds=(0.0, MAX_VELOCITY_NORM),
    ),
    _field(
        "velocity_ema_factor",
        Kind.FLOAT,
        "velocityEmaFactor",
        flag="--velocity-ema",
        help="blend each step's velocity with the last one's, 0-1 (0: off; try 0.1)",
        bounds=(0.0, 1.0),
    ),
    _field(
        "use_adg",
        Kind.BOOL,
        flag="--adg",
        help="base and SFT: adaptive dual guidance (the 'adg' guidance variant)",
    ),
    _field(
        "guidance_variant",
        Kind.STR,
        "guidanceVariant",
        flag="--guidance-variant",
        help="base and SFT: the guidance style",
        choices=tuple(GUIDANCE_VARIANTS),
    ),
    FieldSpec(
        "guidance_params",
        Kind.MAPPING,
        Group.GENERATION,
        ("guidanceParams",),
        "guidance_params",
        flag=Flag(
            ("--guidance-params",),
            {
                "type": _json_object,
                "default": None,
                "metavar": "JSON",
                "help": "the guidance variant's parameters as JSON, e.g. '{\"eta\": 0.5}'; per variant: "
                + "; ".join(f"{variant}: {', '.join(keys) or 'none'}" for variant, keys in _VARIANTS),
            },
        ),
    ),
    FieldSpec(
        "dcw_enabled",
        Kind.BOOL,
        Group.GENERATION,
        (),
        "dcw_enabled",
        flag=Flag(
            ("--dcw",),
            {
                "action": argparse.BooleanOptionalAction,
                "default": None,
                "help": "wavelet-domain correction of each step "
                "(default: on for turbo, off for base and SFT)",
            },
        ),
    ),
    _field("dcw_mode", Kind.STR, flag="--dcw-mode", help="the bands DCW corrects", choices=DCW_MODES),
    _field(
        "dcw_scaler",
        Kind.FLOAT,
        flag="--dcw-scaler",
        help="DCW strength on the low band (or the only one)",
        bounds=(0.0, MAX_DCW_SCALER),
    ),
    _field(
        "dcw_high_scaler",
        Kind.FLOAT,
        flag="--dcw-high-scaler",
        help="DCW strength on the high band (mode double)",
        bounds=(0.0, MAX_DCW_SCALER),
    ),
    _field("dcw_wavelet", Kind.STR, flag="--dcw-wavelet", help="DCW's wavelet", choices=DCW_WAVELETS),
    _field(
        "retake_seed",
        Kind.SEED,
        flag="--retake-seed",
        help="retake: the seed (or comma list) of the noise blended in (default: random)",
    ),
    _field(
        "retake_variance",
        Kind.FLOAT,
        flag="--retake-variance",
        help="retake: how much of that noise, 0-1 (0: off)",
        bounds=(0.0, 1.0),
    ),
    _field(
        "latent_shift",
        Kind.FLOAT,
        "latentShift",
        flag="--latent-shift",
        help="added to the latents before decoding",
        bounds=(-MAX_LATENT_SHIFT, MAX_LATENT_SHIFT),
    ),
    _field(
        "latent_rescale",
        Kind.FLOAT,
        "latentRescale",
        flag="--latent-rescale",
        help="the latents are multiplied by it before decoding",
        bounds=(0.0, MAX_LATENT_RESCALE),
    ),
    _field(
        "fade_in_duration",
        Kind.FLOAT,
        flag="--fade-in",
        help="seconds of fade-in on the result",
        bounds=(0.0, MAX_DURATION_S),
    ),
    _field(
        "fade_out_duration",
        Kind.FLOAT,
        flag="--fade-out",
        help="seconds of fade-out on the result",
        bounds=(0.0, MAX_DURATION_S),
    ),
)
EDITS = (
    _field(
        "cover_noise_strength",
        Kind.FLOAT,
        "coverNoiseStrength",
        flag="--cover-noise-strength",
        help="start from the source noised part-way down the schedule, 0-1 (0: pure noise)",
        bounds=(0.0, 1.0),
    ),
    _field(
        "repaint_mode",
        Kind.STR,
        flag="--repaint-mode",
        help="repaint: how much of the source outside the window is kept",
        choices=REPAINT_MODES,
    ),
    _field(
        "repaint_strength",
        Kind.FLOAT,
        flag="--repaint-strength",
        help="repaint mode balanced: 0 keeps the source, 1 regenerates",
        bounds=(0.0, 1.0),
    ),
    _field(
        "repaint_latent_crossfade_frames",
        Kind.INT,
        flag="--repaint-crossfade-frames",
        help="accepted, unused as upstream (the crossfades follow --repaint-mode)",
        bounds=(0, MAX_CROSSFADE_FRAMES),
    ),
    _field(
        "repaint_wav_crossfade_sec",
        Kind.FLOAT,
        flag="--repaint-wav-crossfade",
        help="accepted, unused as upstream (the crossfades follow --repaint-mode)",
        bounds=(0.0, MAX_WAV_CROSSFADE_S),
    ),
    _field(
        "chunk_mask_mode",
        Kind.STR,
        flag="--chunk-mask-mode",
        help="auto (the model decides where to generate) or explicit (the task's window)",
        choices=CHUNK_MASK_MODES,
    ),
    _field(
        "flow_edit_morph",
        Kind.BOOL,
        flag="--flow-edit",
        help="flow edit: change --src-audio from its own caption and lyrics to --caption and --lyrics",
    ),
    _field(
        "flow_edit_source_caption",
        Kind.STR,
        flag="--flow-edit-source-caption",
        help="flow edit: what the source is, in words",
    ),
    _field(
        "flow_edit_source_lyrics",
        Kind.STR,
        flag="--flow-edit-source-lyrics",
        help="flow edit: the source's lyrics",
    ),
    _field(
        "flow_edit_n_min",
        Kind.FLOAT,
        flag="--flow-edit-n-min",
        help="flow edit: where in the schedule the edit starts, 0-1",
        bounds=(0.0, 1.0),
    ),
    _field(
        "flow_edit_n_max",
        Kind.FLOAT,
        flag="--flow-edit-n-max",
        help="flow edit: where it ends, 0-1",
        bounds=(0.0, 1.0),
    ),
    _field(
        "flow_edit_n_avg",
        Kind.INT,
        flag="--flow-edit-n-avg",
        help="flow edit: noise samples averaged per step",
        bounds=(1, MAX_FLOW_EDIT_AVG),
    ),
    _field(
        "global_caption",
        Kind.STR,
        flag="--global-caption",
        help="stem (SFT) checkpoints: the whole song, in words (--caption: the stem)",
    ),
)
