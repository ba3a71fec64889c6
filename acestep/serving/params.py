"""``/release_task`` parameters: upstream's aliases and three lookup places, turned into typed values.

Upstream looks every name up at the top level, then in ``param_obj``, then in the first non-empty of
``metas``/``meta``/``metadata``/``user_metadata``/``userMetadata`` (docs/api.md). The names and
kinds are the field table's (``acestep.fields``), which also reads each value; range and value
checks stay in :class:`~acestep.request.GenerationRequest`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from acestep.errors import error_message, shown
from acestep.fields import (
    BY_NAME,
    FIELDS,
    GENERATION,
    LM_BACKENDS,
    LM_FEATURES,
    LM_KNOBS,
    MAX_MODEL_CHARS,
    NO_EFFECT,
    NUMERIC_KINDS,
    UPSTREAM_NAME,
    FieldSpec,
    ParamError,
    coerce,
)
from acestep.request import GenerationRequest
from acestep.tasks import MAX_NAME_CHARS

# What other modules import from here; the table's names (LM_BACKENDS, ParamError, ...) stay
# importable from here as they were before the table moved to acestep.fields.
__all__ = [
    "ALL_SPECS",
    "LM_BACKENDS",
    "MAX_MODEL_CHARS",
    "MAX_TASK_IDS",
    "MAX_TASK_ID_CHARS",
    "ParamError",
    "ReleaseParams",
    "parse_release_params",
    "parse_task_id_list",
]

META_KEYS = ("metas", "meta", "metadata", "user_metadata", "userMetadata")
# Multipart file fields; the upload layer turns them into *_path values, so a file object here is
# not a parameter. A plain string under reference_audio/src_audio is our own field name for a path.
_UPLOAD_KEYS = frozenset({"ref_audio", "reference_audio", "ctx_audio", "src_audio"})
_STRUCTURAL_KEYS = frozenset({"param_obj", "ai_token", "task_id_list", *META_KEYS, *_UPLOAD_KEYS})
# Bounds of what is not a request field (those are bounded by GenerationRequest or the field table).
MAX_TASK_IDS = 1000  # task ids one /query_result asks about
MAX_TASK_ID_CHARS = 128  # a task id is a UUID (36 characters)
IGNORED_SHOWN = 20  # unknown parameter names a warning lists
ALL_SPECS = FIELDS
_KNOWN_KEYS = frozenset(BY_NAME) | _STRUCTURAL_KEYS


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
            name = UPSTREAM_NAME.get(ours, ours) or "request"
            message = error_message(first)
            raise ParamError(name, f"{name}: {message}" if ours else message) from None


_FORMAT_NAMES = frozenset({"mp3", "flac", "wav", "wav32", "ogg", "opus", "aac"})


def parse_release_params(raw: Mapping[str, Any]) -> ReleaseParams:
    """Resolve aliases and lookup places and convert form strings; a value that cannot be read is a
    ParamError naming the field (``to_request`` then checks ranges and choices)."""
    if not isinstance(raw, Mapping):
        raise ParamError("body", "JSON payload must be an object")
    fmt = raw.get("format")
    if isinstance(fmt, str) and fmt.strip().lower() in _FORMAT_NAMES:
        # `format` is use_format's alias upstream, but clients also send it meaning the audio format.
        raw = {k: v for k, v in raw.items() if k != "format"}
        raw.setdefault("audio_format", fmt.strip().lower())
    places = _places(raw)
    sent: dict[str, Any] = {}
    for spec in FIELDS:
        found = _lookup(places, spec)
        if found is not None:
            sent[spec.name] = coerce(spec, *found)

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


def _lookup(places: list[Mapping[str, Any]], spec: FieldSpec) -> tuple[str, Any] | None:
    """The first sent value: every alias at the top level, then in param_obj, then in metas."""
    for depth, place in enumerate(places):
        for name in spec.names:
            value = place.get(name)
            if _is_empty(value):
                continue
            if depth == 0 and name in _UPLOAD_KEYS and not isinstance(value, str):
                continue
            # Upstream result metas fill unknown numbers with "N/A"; echoed back, it means unset.
            if spec.kind in NUMERIC_KINDS and isinstance(value, str) and value.strip().upper() == "N/A":
                continue
            return name, value
    return None


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
