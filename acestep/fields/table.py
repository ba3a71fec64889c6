"""The field table: every request field once, with upstream's aliases, its kind, bounds and CLI flag.

Upstream's REST server accepts each field under several names (camelCase, older spellings) at the
top level, in ``param_obj`` and in ``metas`` (docs/api.md). The REST lookup
(``acestep.serving.params``), the LM options (``acestep.serving.lm_params``), the ``acestep
generate`` flags (``acestep.cli``) and the ``/lego`` form are all read from this table. The order
is the order of the CLI's help; the bounds are ``acestep.tasks``'s.
"""

from __future__ import annotations

from typing import Any

from acestep.fields.sampling_table import EDITS, SAMPLER
from acestep.fields.spec import FieldSpec, Flag, Group, Kind
from acestep.request import AUDIO_FORMATS, TIME_SIGNATURES, VOCAL_LANGUAGES, GenerationRequest
from acestep.tasks import (
    MAX_BATCH_SIZE,
    MAX_BPM,
    MAX_DURATION_S,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_STEPS,
    MIN_BPM,
    TASK_TYPES,
    TRACK_NAMES,
)

LM_BACKENDS = ("vllm", "pt", "mlx")
MAX_MODEL_CHARS = 255  # a checkpoint folder's name (NAME_MAX)


def _default(name: str) -> Any:
    """The request's own default, shown in a flag's help only (never passed on)."""
    return GenerationRequest.model_fields[name].default


def _flag(*names: str, **options: Any) -> Flag:
    return Flag(names, options)


def _gen(name: str, kind: Kind, *aliases: str, target: str | None = None, **extra: Any) -> FieldSpec:
    return FieldSpec(name, kind, Group.GENERATION, aliases, target or name, **extra)


def _lm(group: Group, name: str, kind: Kind, *aliases: str, request: bool = True, **extra: Any) -> FieldSpec:
    return FieldSpec(name, kind, group, aliases, name if request else None, **extra)


_FLAG_TYPES = {Kind.INT: int, Kind.FLOAT: float, Kind.STR: str}


def _sampling(name: str, kind: Kind, help: str) -> FieldSpec:
    """An LM sampling knob: a request field of the same name, with a flag that shows its default."""
    flag = _flag(
        f"--{name.replace('_', '-')}",
        type=_FLAG_TYPES[kind],
        default=None,
        help=f"{help} (default {_default(name)!r})",
    )
    return _lm(Group.LM_KNOB, name, kind, flag=flag)


def _switch(name: str, *aliases: str, help: str) -> FieldSpec:
    """An upstream switch that defaults to true; the CLI's flag turns it off."""
    flag = _flag(
        f"--no-{name.removeprefix('use_').replace('_', '-')}", action="store_false", default=None, help=help
    )
    return _lm(Group.LM_FEATURE, name, Kind.BOOL, *aliases, flag=flag)


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
    ),
    # Not on the command line (or, keep_alive and the LoRA flags, with a meaning of their own there).
    _gen("use_random_seed", Kind.BOOL, "useRandomSeed"),
    _gen("instruction", Kind.STR),
    _gen("cfg_interval_start", Kind.FLOAT),
    _gen("cfg_interval_end", Kind.FLOAT),
    _gen("timesteps", Kind.TIMESTEPS, "custom_timesteps", "customTimesteps"),
    _gen("keep_alive", Kind.KEEP_ALIVE, "keepAlive"),
    _gen("enable_normalization", Kind.BOOL),
    _gen("normalization_db", Kind.FLOAT),
    _gen("lora", Kind.NAMES, "loras", "lora_name", "loraName"),
    _gen("lora_scale", Kind.NAMES, "loraScale", "lora_scales"),
    *SAMPLER,  # the sampler's and the editing fields: acestep/fields/sampling_table.py
    *EDITS,
)
# Switches that make a job need the LM (use_cot_* only when written as true: upstream defaults
# them to true, and that default silently ran the LM - defect 5).
LM_FEATURES = (
    _lm(
        Group.LM_FEATURE,
        "thinking",
        Kind.BOOL,
        flag=_flag(
            "--thinking", action="store_true", default=None, help="the LM writes metadata and audio codes"
        ),
    ),
    _switch(
        "use_cot_caption",
        "cot_caption",
        "cot-caption",
        help="keep the caption as written (the LM does not rewrite it)",
    ),
    _switch(
        "use_cot_language", "cot_language", "cot-language", help="the LM does not choose the vocal language"
    ),
    _switch(
        "use_cot_metas",
        "cot_metas",
        "cot-metas",
        help="the LM does not fill bpm, key, time signature and duration",
    ),
    _lm(Group.LM_FEATURE, "sample_mode", Kind.BOOL, "sampleMode"),
    _lm(
        Group.LM_FEATURE,
        "sample_query",
        Kind.STR,
        "sampleQuery",
        "description",
        "desc",
        flag=_flag(
            "--sample-query",
            default=None,
            metavar="TEXT",
            help="describe a song; the LM writes its caption, lyrics and metadata (sample mode)",
        ),
    ),
    # Upstream lists `format` as an alias of use_format, so it is a boolean, not the audio format.
    _lm(
        Group.LM_FEATURE,
        "use_format",
        Kind.BOOL,
        "useFormat",
        "format",
        flag=_flag(
            "--use-format", action="store_true", default=None, help="the LM tidies the caption and lyrics"
        ),
    ),
    _lm(Group.LM_FEATURE, "analysis_only", Kind.BOOL, "analysisOnly", request=False),
    _lm(Group.LM_FEATURE, "full_analysis_only", Kind.BOOL, "fullAnalysisOnly", request=False),
)
LM_KNOBS = (
    _sampling("lm_temperature", Kind.FLOAT, "LM sampling temperature"),
    _sampling("lm_cfg_scale", Kind.FLOAT, "LM classifier-free guidance scale"),
    _sampling("lm_top_k", Kind.INT, "LM top-k sampling (0: off)"),
    _sampling("lm_top_p", Kind.FLOAT, "LM nucleus sampling"),
    _sampling("lm_repetition_penalty", Kind.FLOAT, "LM repetition penalty"),
    _sampling("lm_negative_prompt", Kind.STR, "what the LM's guidance steers away from"),
    # Which LM and how it runs: they steer the LM stage, they are no request fields.
    _lm(Group.LM_KNOB, "lm_model_path", Kind.STR, request=False, max_chars=MAX_PATH_CHARS),
    _lm(Group.LM_KNOB, "lm_backend", Kind.STR, request=False, max_chars=MAX_NAME_CHARS, choices=LM_BACKENDS),
    _lm(
        Group.LM_KNOB, "constrained_decoding", Kind.BOOL, "constrainedDecoding", "constrained", request=False
    ),
    _lm(Group.LM_KNOB, "constrained_decoding_debug", Kind.BOOL, "constrainedDecodingDebug", request=False),
    _lm(Group.LM_KNOB, "allow_lm_batch", Kind.BOOL, "allowLmBatch", "parallel_thinking", request=False),
)
# Accepted for compatibility; they change nothing here (or are refused when they would have to).
NO_EFFECT = (
    FieldSpec("use_tiled_decode", Kind.BOOL, Group.NO_EFFECT, ("useTiledDecode",)),
    FieldSpec("is_format_caption", Kind.BOOL, Group.NO_EFFECT, ("isFormatCaption",)),
)
MODEL = FieldSpec(
    "model",
    Kind.STR,
    Group.MODEL,
    ("model_name", "modelName", "dit_model", "ditModel"),
    max_chars=MAX_MODEL_CHARS,
)
FIELDS = (*GENERATION, *LM_FEATURES, *LM_KNOBS, *NO_EFFECT, MODEL)
# Every name (canonical or alias) -> its entry.
BY_NAME = {name: spec for spec in FIELDS for name in spec.names}
# GenerationRequest field -> upstream canonical name, for error messages.
UPSTREAM_NAME = {spec.target: spec.name for spec in GENERATION if spec.target}
