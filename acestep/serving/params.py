"""``/release_task`` parameters: upstream's aliases and three lookup places, turned into typed values.

Upstream looks every name up at the top level, then in ``param_obj``, then in the first non-empty of
``metas``/``meta``/``metadata``/``user_metadata``/``userMetadata`` (serving spec section 3.2). Form
bodies carry strings, so booleans and numbers are converted here; unlike upstream, a value that
cannot be understood is a :class:`ParamError` naming the field instead of a silent default.
Range and value checks stay in :class:`~acestep.request.GenerationRequest`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from acestep.errors import shown
from acestep.request import GenerationRequest
from acestep.tasks import MAX_NAME_CHARS, MAX_PATH_CHARS

_TRUE = frozenset({"1", "true", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "no", "n", "off"})
META_KEYS = ("metas", "meta", "metadata", "user_metadata", "userMetadata")
# Multipart file fields; the upload layer turns them into *_path values, so a file object here is
# not a parameter. A plain string under reference_audio/src_audio is our own field name for a path.
_UPLOAD_KEYS = frozenset({"ref_audio", "reference_audio", "ctx_audio", "src_audio"})
_STRUCTURAL_KEYS = frozenset({"param_obj", "ai_token", "task_id_list", *META_KEYS, *_UPLOAD_KEYS})
LM_BACKENDS = ("vllm", "pt", "mlx")
_NUMERIC_KINDS = frozenset({"int", "float", "seed", "timesteps"})
# Bounds of what is not a GenerationRequest field (those are bounded there).
MAX_MODEL_CHARS = 255  # a checkpoint folder's name (NAME_MAX)
MAX_TASK_IDS = 1000  # task ids one /query_result asks about
MAX_TASK_ID_CHARS = 128  # a task id is a UUID (36 characters)
IGNORED_SHOWN = 20  # unknown parameter names a warning lists


class ParamError(ValueError):
    """A request parameter that cannot be understood; .field names it (upstream's canonical name)."""

    field: str

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class _Spec:
    name: str  # upstream's canonical name
    kind: str  # str | int | float | bool | seed | timesteps | classes | keep_alive | names
    aliases: tuple[str, ...] = ()
    target: str | None = None  # the GenerationRequest field, for generation parameters
    max_chars: int | None = None  # for a "str" that is no GenerationRequest field (those bound it)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _gen(name: str, kind: str, *aliases: str, target: str | None = None) -> _Spec:
    return _Spec(name, kind, aliases, target or name)


GENERATION = (
    _gen("prompt", "str", "caption", target="caption"),
    _gen("lyrics", "str"),
    _gen("instrumental", "bool"),
    _gen("bpm", "int"),
    _gen("key_scale", "str", "keyscale", "keyScale", "key"),
    _gen("time_signature", "str", "timesignature", "timeSignature"),
    _gen("audio_duration", "float", "duration", "audioDuration", "target_duration", "targetDuration"),
    _gen("vocal_language", "str", "vocalLanguage", "language"),
    _gen("inference_steps", "int", "inferenceSteps", "num_inference_steps"),
    _gen("guidance_scale", "float", "guidanceScale"),
    _gen("use_random_seed", "bool", "useRandomSeed"),
    _gen("seed", "seed"),
    _gen("batch_size", "int"),
    _gen("repainting_start", "float"),
    _gen("repainting_end", "float"),
    _gen("instruction", "str"),
    _gen("audio_cover_strength", "float", "audioCoverStrength"),
    _gen(
        "reference_audio_path",
        "str",
        "ref_audio_path",
        "referenceAudioPath",
        "refAudioPath",
        "reference_audio",
        target="reference_audio",
    ),
    _gen(
        "src_audio_path",
        "str",
        "ctx_audio_path",
        "sourceAudioPath",
        "srcAudioPath",
        "ctxAudioPath",
        "src_audio",
        target="src_audio",
    ),
    _gen("task_type", "str", "taskType"),
    _gen("cfg_interval_start", "float"),
    _gen("cfg_interval_end", "float"),
    _gen("shift", "float"),
    _gen("timesteps", "timesteps"),
    _gen("audio_format", "str"),
    _gen("audio_code_string", "str", "audio_codes"),
    _gen("track_name", "str"),
    _gen("track_classes", "classes", "complete_track_classes"),
    _gen("keep_alive", "keep_alive", "keepAlive"),
    _gen("enable_normalization", "bool"),
    _gen("normalization_db", "float"),
    _gen("lora", "names", "loras", "lora_name", "loraName"),
    _gen("lora_scale", "names", "loraScale", "lora_scales"),
)
# Switches that make a job need the LM (use_cot_* only when written as true: upstream defaults
# them to true, and that default silently ran the LM - defect 5).
LM_FEATURES = (
    _Spec("thinking", "bool"),
    _Spec("sample_mode", "bool", ("sampleMode",)),
    _Spec("sample_query", "str", ("sampleQuery", "description", "desc")),
    # Upstream lists `format` as an alias of use_format, so it is a boolean, not the audio format.
    _Spec("use_format", "bool", ("useFormat", "format")),
    _Spec("analysis_only", "bool", ("analysisOnly",)),
    _Spec("full_analysis_only", "bool", ("fullAnalysisOnly",)),
    _Spec("use_cot_caption", "bool", ("cot_caption", "cot-caption")),
    _Spec("use_cot_language", "bool", ("cot_language", "cot-language")),
    _Spec("use_cot_metas", "bool", ("cot_metas", "cot-metas")),
)
LM_KNOBS = (
    _Spec("lm_temperature", "float"),
    _Spec("lm_cfg_scale", "float"),
    _Spec("lm_top_k", "int"),
    _Spec("lm_top_p", "float"),
    _Spec("lm_repetition_penalty", "float"),
    _Spec("lm_negative_prompt", "str"),
    _Spec("lm_model_path", "str", max_chars=MAX_PATH_CHARS),
    _Spec("lm_backend", "str", max_chars=MAX_NAME_CHARS),
    _Spec("constrained_decoding", "bool", ("constrainedDecoding", "constrained")),
    _Spec("constrained_decoding_debug", "bool", ("constrainedDecodingDebug",)),
    _Spec("allow_lm_batch", "bool", ("allowLmBatch", "parallel_thinking")),
)
# Accepted for compatibility; they change nothing here (or are refused when they would have to).
NO_EFFECT = (
    _Spec("use_tiled_decode", "bool", ("useTiledDecode",)),
    _Spec("is_format_caption", "bool", ("isFormatCaption",)),
    _Spec("infer_method", "str", ("inferMethod",), max_chars=MAX_NAME_CHARS),
    _Spec("use_adg", "bool"),
)
MODEL = _Spec("model", "str", ("model_name", "modelName", "dit_model", "ditModel"), max_chars=MAX_MODEL_CHARS)
ALL_SPECS = (*GENERATION, *LM_FEATURES, *LM_KNOBS, *NO_EFFECT, MODEL)
_KNOWN_KEYS = frozenset(n for spec in ALL_SPECS for n in spec.names) | _STRUCTURAL_KEYS
# GenerationRequest field -> upstream canonical name, for error messages.
_UPSTREAM_NAME = {spec.target: spec.name for spec in GENERATION if spec.target}


@dataclass
class ReleaseParams:
    """What a ``/release_task`` body asks for, split by where each part goes."""

    # Keyword arguments for GenerationRequest(**fields): only keys the caller sent, so the request's
    # "was the seed given" logic (model_fields_set) keeps working.
    fields: dict[str, Any]
    lm_features: list[str]
    model: str | None
    ignored: list[str]
    ai_token: str | None
    # Every LM-related value the caller sent (features and sampling knobs), parsed, for the LM stage.
    lm_options: dict[str, Any] = field(default_factory=dict)

    def to_request(self) -> GenerationRequest:
        """Build the request; a validation failure becomes a ParamError naming the upstream field."""
        try:
            return GenerationRequest(**self.fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            ours = str(first["loc"][0]) if first["loc"] else ""
            name = _UPSTREAM_NAME.get(ours, ours) or "request"
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ParamError(name, f"{name}: {message}" if ours else message) from None


_FORMAT_NAMES = frozenset({"mp3", "flac", "wav", "wav32", "ogg", "opus", "aac"})


def parse_release_params(raw: Mapping[str, Any]) -> ReleaseParams:
    """Resolve aliases and lookup places, convert form strings, and refuse what cannot be honoured."""
    if not isinstance(raw, Mapping):
        raise ParamError("body", "JSON payload must be an object")
    fmt = raw.get("format")
    if isinstance(fmt, str) and fmt.strip().lower() in _FORMAT_NAMES:
        # `format` is use_format's alias upstream, but clients also send it meaning the audio format.
        raw = {k: v for k, v in raw.items() if k != "format"}
        raw.setdefault("audio_format", fmt.strip().lower())
    places = _places(raw)
    sent: dict[str, Any] = {}
    for spec in ALL_SPECS:
        found = _lookup(places, spec)
        if found is not None:
            used, value = found
            sent[spec.name] = _convert(spec, used, value)
    _refuse_unsupported(sent)

    fields = {spec.target: sent[spec.name] for spec in GENERATION if spec.target and spec.name in sent}
    features = _features(sent)
    lm_options = {s.name: sent[s.name] for s in (*LM_FEATURES, *LM_KNOBS) if s.name in sent}
    ignored = [s.name for s in NO_EFFECT if s.name in sent]
    if not features:  # switches and sampling knobs for an LM that will not run
        ignored += [name for name in OPTIONAL_LM if sent.get(name) is True]
        ignored += [s.name for s in LM_KNOBS if s.name in sent]
    ignored += [key for key in raw if key not in _KNOWN_KEYS]
    return ReleaseParams(
        fields=fields,
        lm_features=features,
        model=sent.get("model"),
        ignored=_listed(list(dict.fromkeys(ignored))),
        ai_token=_ai_token(raw),
        lm_options=lm_options,
    )


def parse_task_id_list(value: Any) -> list[str]:
    """``/query_result``'s ``task_id_list``: a JSON array, or a JSON-encoded string of one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ParamError(
                "task_id_list", 'task_id_list must be a JSON array of task ids, e.g. ["<task id>"]'
            ) from None
    if not isinstance(value, list | tuple):
        raise ParamError("task_id_list", f"task_id_list must be an array of task ids, got {shown(value)}")
    if len(value) > MAX_TASK_IDS:
        raise ParamError("task_id_list", f"task_id_list has {len(value)} ids; at most {MAX_TASK_IDS}")
    if not all(isinstance(item, str) for item in value):
        raise ParamError("task_id_list", "task_id_list must contain only task id strings")
    if any(len(item) > MAX_TASK_ID_CHARS for item in value):
        raise ParamError("task_id_list", f"a task id is at most {MAX_TASK_ID_CHARS} characters")
    return [item.strip() for item in value]


def _listed(names: list[str]) -> list[str]:
    """Unknown parameter names as a warning lists them: a few, each clipped (a body may hold any)."""
    listed = [name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS] + "…" for name in names]
    extra = len(names) - IGNORED_SHOWN
    return listed[:IGNORED_SHOWN] + ([f"and {extra} more"] if extra > 0 else [])


def _places(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    places: list[Mapping[str, Any]] = [raw]
    if not _is_empty(raw.get("param_obj")):
        places.append(_as_dict("param_obj", raw["param_obj"]))
    for key in META_KEYS:
        if _is_empty(raw.get(key)):
            continue
        metas = _as_dict(key, raw[key])
        if metas:
            places.append(metas)
            break
    return places


def _as_dict(name: str, value: Any) -> Mapping[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise ParamError(
                name, f"{name} is not valid JSON: {getattr(exc, 'msg', 'nested too deeply')}"
            ) from None
    if not isinstance(value, Mapping):
        raise ParamError(name, f"{name} must be an object, got {type(value).__name__}")
    return value


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _lookup(places: list[Mapping[str, Any]], spec: _Spec) -> tuple[str, Any] | None:
    """The first sent value: every alias at the top level, then in param_obj, then in metas."""
    for depth, place in enumerate(places):
        for name in spec.names:
            value = place.get(name)
            if _is_empty(value):
                continue
            if depth == 0 and name in _UPLOAD_KEYS and not isinstance(value, str):
                continue
            # Upstream result metas fill unknown numbers with "N/A"; echoed back, it means unset.
            if spec.kind in _NUMERIC_KINDS and isinstance(value, str) and value.strip().upper() == "N/A":
                continue
            return name, value
    return None


def _label(spec: _Spec, used: str) -> str:
    return spec.name if used == spec.name else f"{spec.name} (sent as {used})"


def _convert(spec: _Spec, used: str, value: Any) -> Any:
    label = _label(spec, used)
    if spec.kind == "bool":
        return _to_bool(spec.name, label, value)
    if spec.kind == "int":
        return _to_int(spec.name, label, value)
    if spec.kind == "float":
        return _to_float(spec.name, label, value)
    if spec.kind == "seed":
        return _to_seed(label, value)
    if spec.kind == "timesteps":
        return _to_timesteps(label, value)
    if spec.kind == "classes":
        return _to_classes(label, value)
    if spec.kind == "names":  # a name, a comma list or a JSON list: GenerationRequest reads them
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise ParamError(spec.name, f"{label} is not a valid JSON list: {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, str | int | float | list | tuple):
            raise ParamError(spec.name, f"{label} must be a string, a number or a list")
        return value
    if spec.kind == "keep_alive":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ParamError(spec.name, f"{label} must be a duration such as 300, '5m', 0 or -1")
        return value
    text = _to_str(spec.name, label, value)
    if spec.max_chars is not None and len(text) > spec.max_chars:
        raise ParamError(spec.name, f"{label} must be at most {spec.max_chars} characters, got {len(text)}")
    if spec.name == "lm_backend":
        if text.strip().lower() not in LM_BACKENDS:
            raise ParamError(spec.name, f"{label} must be one of {', '.join(LM_BACKENDS)}, got {text!r}")
        return text.strip().lower()
    return text


def _to_bool(name: str, label: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    hint = "; set the output format with audio_format" if label.endswith("(sent as format)") else ""
    raise ParamError(
        name, f"{label} must be a boolean (true/false, 1/0, yes/no, on/off), got {value!r}{hint}"
    )


def _to_float(name: str, label: str, value: Any) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ParamError(name, f"{label} must be a number, got {value!r}")
    return number


def _to_int(name: str, label: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        number = _to_float(name, label, value)
    except ParamError:
        number = math.nan
    if not number.is_integer():
        raise ParamError(name, f"{label} must be an integer, got {value!r}")
    return int(number)


def _to_str(name: str, label: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    # JSON clients write e.g. "time_signature": 4; a number reads the same as its text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ParamError(name, f"{label} must be a string, got {type(value).__name__}")


def _to_seed(label: str, value: Any) -> int | str:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple) and value:
        return ",".join(str(_to_int("seed", label, item)) for item in value)
    raise ParamError(
        "seed", f"{label} must be an integer or a comma-separated list of integers, got {value!r}"
    )


def _to_timesteps(label: str, value: Any) -> list[float]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):
                raise ParamError("timesteps", f"{label} is not a valid JSON list: {text!r}") from None
        else:
            value = [part for part in text.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ParamError("timesteps", f"{label} must be a list of numbers or a comma-separated string")
    return [_to_float("timesteps", label, item) for item in value]


def _to_classes(label: str, value: Any) -> list[str] | str:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ParamError("track_classes", f"{label} is not a valid JSON list: {value!r}") from None
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ParamError("track_classes", f"{label} must be a list of track names or a comma-separated string")


def _refuse_unsupported(sent: dict[str, Any]) -> None:
    """Parameters must do what they say: refuse what this version cannot do rather than drop it."""
    method = sent.get("infer_method")
    if method is not None:
        method = method.strip().lower()
        if method == "sde":
            raise ParamError("infer_method", "infer_method 'sde' is not supported in this version; use 'ode'")
        if method != "ode":
            raise ParamError(
                "infer_method", f"infer_method must be 'ode' (or 'sde', unsupported), got {method!r}"
            )
    if sent.get("use_adg") is True:
        raise ParamError("use_adg", "use_adg (adaptive dual guidance) is not supported in this version")


def _features(sent: dict[str, Any]) -> list[str]:
    features = [name for name in ("thinking", "sample_mode") if sent.get(name) is True]
    if "sample_mode" not in features and str(sent.get("sample_query") or "").strip():
        features.append("sample_mode")  # a non-empty query implies sample mode (upstream)
    names = ("use_format", "analysis_only", "full_analysis_only")
    return features + [name for name in names if sent.get(name) is True]


# Optional LM features: they shape an LM run that thinking, sample mode or format asked for; alone
# they run nothing (upstream's defaults are true and wrappers send them), so they are reported as
# having no effect rather than refused.
OPTIONAL_LM = ("use_cot_caption", "use_cot_language", "use_cot_metas")


def _ai_token(raw: Mapping[str, Any]) -> str | None:
    token = raw.get("ai_token")
    if _is_empty(token):
        return None
    if not isinstance(token, str):
        raise ParamError("ai_token", "ai_token must be a string")
    return token.strip()
