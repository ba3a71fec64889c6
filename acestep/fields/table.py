"""The field table: every request field once, with upstream's aliases, its kind, bounds and CLI flag.

Upstream's REST server accepts each field under several names (camelCase, older spellings) at the
top level, in ``param_obj`` and in ``metas`` (docs/api.md). The REST lookup
(``acestep.serving.params``), the LM options (``acestep.serving.lm_params``), the ``acestep
generate`` flags (``acestep.cli``) and the ``/lego`` form are all read from this table. The order
is the order of the CLI's help; the bounds are ``acestep.tasks``'s.
"""

from __future__ import annotations

from typing import Any

from acestep.fields.lm_table import LM_FEATURES, LM_KNOBS
from acestep.fields.sampling_table import EDITS, SAMPLER
from acestep.fields.spec import FieldSpec, Flag, Group, Kind
from acestep.request import AUDIO_FORMATS, TIME_SIGNATURES, VOCAL_LANGUAGES, GenerationRequest
from acestep.tasks import (
    MAX_BATCH_SIZE,
    MAX_BPM,
    MAX_DURATION_S,
    MAX_STEPS,
    MIN_BPM,
    TASK_TYPES,
    TRACK_NAMES,
)

MAX_MODEL_CHARS = 255  # a checkpoint folder's name (NAME_MAX)


def _default(name: str) -> Any:
    """The request's own default, shown in a flag's help only (never passed on)."""
    return GenerationRequest.model_fields[name].default


def _flag(*names: str, **options: Any) -> Flag:
    return Flag(names, options)


def _gen(name: str, kind: Kind, *aliases: str, target: str | None = None, **extra: Any) -> FieldSpec:
    return FieldSpec(name, kind, Group.GENERATION, aliases, target or name, **extra)


GENERATION = (
    _gen(
        "task_type",
        Kind.STR,
        "taskType",
        flag=_flag(
            "--task",
            default="text2music",
            type=str.lower,
            choices=TASK_TYPES,
            help="what to make (default %(default)s; all the others work on --src-audio)",
        ),
    ),
    _gen(
        "prompt",
        Kind.STR,
        "caption",
        target="caption",
        flag=_flag("--caption", "--prompt", default="", help="the music, described in words"),
    ),
    _gen(
        "lyrics",
        Kind.STR,
        flag=_flag("--lyrics", default="", help="the lyrics, with [verse]/[chorus] tags (default: none)"),
    ),
    _gen(
        "instrumental",
        Kind.BOOL,
        flag=_flag(
            "--instrumental", action="store_true", help="no vocals (the lyrics become [Instrumental])"
        ),
    ),
    _gen(
        "track_name",
        Kind.STR,
        "trackName",
        flag=_flag(
            "--track-name",
            default=None,
            type=str.lower,
            choices=TRACK_NAMES,
            metavar="NAME",
            help="the track lego generates or extract takes out: %(choices)s",
        ),
    ),
    _gen(
        "track_classes",
        Kind.CLASSES,
        "complete_track_classes",
        "trackClasses",
        "instruments",
        flag=_flag(
            "--track-classes",
            default=None,
            help=f"the tracks complete adds, comma-separated, from: {', '.join(TRACK_NAMES)}",
        ),
    ),
    _gen(
        "src_audio_path",
        Kind.STR,
        "ctx_audio_path",
        "sourceAudioPath",
        "srcAudioPath",
        "ctxAudioPath",
        "src_audio",
        target="src_audio",
        flag=_flag("--src-audio", default=None, help="the source audio file (WAV, FLAC, MP3, OGG)"),
    ),
    _gen(
        "reference_audio_path",
        Kind.STR,
        "ref_audio_path",
        "referenceAudioPath",
        "refAudioPath",
        "reference_audio",
        target="reference_audio",
        flag=_flag("--reference-audio", default=None, help="an audio file whose style the result takes"),
    ),
    _gen(
        "audio_code_string",
        Kind.STR,
        "audio_codes",
        "audioCodeString",
        flag=_flag(
            "--audio-codes",
            default="",
            help="5 Hz audio codes (<|audio_code_N|>...) to build on, in place of a source (cover)",
        ),
    ),
    _gen(
        "audio_duration",
        Kind.FLOAT,
        "duration",
        "audioDuration",
        "target_duration",
        "targetDuration",
        flag=_flag(
            "--duration",
            type=float,
            default=-1.0,
            help="seconds to generate (default -1: the source's length, else automatic)",
        ),
    ),
    _gen(
        "bpm",
        Kind.INT,
        bounds=(MIN_BPM, MAX_BPM),
        flag=_flag("--bpm", type=int, default=None, help="tempo in beats per minute (default: free)"),
    ),
    _gen(
        "key_scale",
        Kind.STR,
        "keyscale",
        "keyScale",
        "key",
        flag=_flag("--key-scale", default="", help="the key, e.g. 'C major' or 'F# minor' (default: free)"),
    ),
    _gen(
        "time_signature",
        Kind.STR,
        "timesignature",
        "timeSignature",
        flag=_flag(
            "--time-signature",
            default="",
            choices=tuple(TIME_SIGNATURES),
            help="beats per bar (default: free)",
        ),
    ),
    _gen(
        "vocal_language",
        Kind.STR,
        "vocalLanguage",
        "language",
        flag=_flag(
            "--language",
            default="unknown",
            type=str.lower,
            choices=sorted(VOCAL_LANGUAGES),
            metavar="CODE",
            help="the language of the lyrics (default %(default)s): %(choices)s",
        ),
    ),
    _gen(
        "inference_steps",
        Kind.INT,
        "inferenceSteps",
        "num_inference_steps",
        bounds=(1, MAX_STEPS),
        flag=_flag(
            "--steps",
            type=int,
            default=None,
            help="diffusion steps (default: the model's own: 8 for turbo, 50 for base and SFT)",
        ),
        doc="diffusion steps (upstream's REST default 8 whatever the model; base and SFT are made for 50)",
    ),
    _gen(
        "guidance_scale",
        Kind.FLOAT,
        "guidanceScale",
        flag=_flag(
            "--guidance-scale",
            type=float,
            default=None,
            help="how strongly the caption steers base and SFT models "
            f"(default {_default('guidance_scale')})",
        ),
    ),
    _gen(
        "shift",
        Kind.FLOAT,
        flag=_flag("--shift", type=float, default=None, help=f"timestep shift (default {_default('shift')})"),
    ),
    _gen(
        "seed",
        Kind.SEED,
        flag=_flag("--seed", default=None, help="an integer or a comma list; omitted = random"),
    ),
    _gen(
        "batch_size",
        Kind.INT,
        bounds=(1, MAX_BATCH_SIZE),
        flag=_flag("--batch-size", type=int, default=1, help="how many takes to make at once (default 1)"),
    ),
    _gen(
        "repainting_start",
        Kind.FLOAT,
        bounds=(-MAX_DURATION_S, MAX_DURATION_S),
        flag=_flag(
            "--repainting-start",
            type=float,
            default=None,
            help="repaint and lego: where the window starts (s)",
        ),
    ),
    _gen(
        "repainting_end",
        Kind.FLOAT,
        bounds=(-MAX_DURATION_S, MAX_DURATION_S),
        flag=_flag(
            "--repainting-end",
            type=float,
            default=None,
            help="repaint and lego: where it ends (s; -1: the end)",
        ),
    ),
    _gen(
        "audio_cover_strength",
        Kind.FLOAT,
        "audioCoverStrength",
        "cover_strength",
        "coverStrength",
        flag=_flag(
            "--cover-strength",
            type=float,
            default=None,
            help=f"cover: how closely to follow the source, 0-1 (default {_default('audio_cover_strength')})",
        ),
    ),
    _gen(
        "audio_format",
        Kind.STR,
        flag=_flag(
            "--format",
            default=None,
            type=str.lower,
            choices=AUDIO_FORMATS,
            help="the file format (default: -o's extension, else wav)",
        ),
        doc="the audio file format",
    ),
    # Not on the command line (or, keep_alive and the LoRA flags, with a meaning of their own there).
    _gen(
        "use_random_seed",
        Kind.BOOL,
        "useRandomSeed",
        doc="true: a random seed each run; left out, a seed that was sent is used (upstream ignored it)",
    ),
    _gen("instruction", Kind.STR, doc="the DiT's task instruction (default: the task's own)"),
    _gen("cfg_interval_start", Kind.FLOAT, doc="base and SFT: where in the schedule (0-1) guidance starts"),
    _gen("cfg_interval_end", Kind.FLOAT, doc="base and SFT: where in the schedule (0-1) guidance ends"),
    _gen(
        "timesteps",
        Kind.TIMESTEPS,
        "custom_timesteps",
        "customTimesteps",
        doc="a schedule of its own, from 1 towards 0 (a list or a comma list; replaces the steps and shift)",
    ),
    _gen(
        "keep_alive",
        Kind.KEEP_ALIVE,
        "keepAlive",
        doc="how long the model stays loaded after the job: seconds, '5m', 0 (unload) or -1 (always); "
        "default ACESTEP_KEEP_ALIVE",
    ),
    _gen("enable_normalization", Kind.BOOL, doc="peak-normalize the result to normalization_db"),
    _gen("normalization_db", Kind.FLOAT, doc="the peak level of a normalized result, in dB"),
    _gen(
        "lora",
        Kind.NAMES,
        "loras",
        "lora_name",
        "loraName",
        doc="LoRA adapters from GET /v1/loras: a name, a comma list or a list (default: the loaded ones)",
    ),
    _gen(
        "lora_scale", Kind.NAMES, "loraScale", "lora_scales", doc="one scale for every adapter, or one each"
    ),
    *SAMPLER,  # the sampler's and the editing fields: acestep/fields/sampling_table.py
    *EDITS,
)
# Accepted for compatibility; they change nothing here (or are refused when they would have to).
_NO_EFFECT_DOC = "accepted for upstream's clients; no effect here (a warning says so)"
NO_EFFECT = (
    FieldSpec("use_tiled_decode", Kind.BOOL, Group.NO_EFFECT, ("useTiledDecode",), doc=_NO_EFFECT_DOC),
    FieldSpec("is_format_caption", Kind.BOOL, Group.NO_EFFECT, ("isFormatCaption",), doc=_NO_EFFECT_DOC),
)
MODEL = FieldSpec(
    "model",
    Kind.STR,
    Group.MODEL,
    ("model_name", "modelName", "dit_model", "ditModel"),
    max_chars=MAX_MODEL_CHARS,
    doc="the DiT that runs it, from GET /v1/models (default: the server's default model)",
)
FIELDS = (*GENERATION, *LM_FEATURES, *LM_KNOBS, *NO_EFFECT, MODEL)
# Every name (canonical or alias) -> its entry.
BY_NAME = {name: spec for spec in FIELDS for name in spec.names}
# GenerationRequest field -> upstream canonical name, for error messages.
UPSTREAM_NAME = {spec.target: spec.name for spec in GENERATION if spec.target}
