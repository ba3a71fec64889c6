"""Reading a sent value by its field's kind. Form bodies carry strings, so booleans and numbers are
converted here; unlike upstream, a value that cannot be understood is a :class:`ParamError` naming
the field instead of a silent default. Range and value checks stay in ``GenerationRequest``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from acestep.errors import shown
from acestep.fields.spec import FieldSpec, Kind
from acestep.settings import FALSE_WORDS, TRUE_WORDS


class ParamError(ValueError):
    """A request parameter that cannot be understood; .field names it (upstream's canonical name)."""

    field: str

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def coerce(spec: FieldSpec, used: str, value: Any) -> Any:
    """``value``, sent under the name ``used``, as the field's kind reads it."""
    label = spec.name if used == spec.name else f"{spec.name} (sent as {used})"
    if spec.kind == Kind.BOOL:
        return to_bool(spec.name, label, value)
    if spec.kind == Kind.INT:
        return to_int(spec.name, label, value)
    if spec.kind == Kind.FLOAT:
        return to_float(spec.name, label, value)
    if spec.kind == Kind.SEED:
        return _to_seed(spec.name, label, value)
    if spec.kind == Kind.TIMESTEPS:
        return _to_timesteps(label, value)
    if spec.kind == Kind.CLASSES:
        return _to_classes(label, value)
    if spec.kind == Kind.NAMES:  # a name, a comma list or a JSON list: GenerationRequest reads them
        if isinstance(value, str) and value.strip().startswith("["):
            value = _json_list(spec.name, label, value)
        if isinstance(value, bool) or not isinstance(value, str | int | float | list | tuple):
            raise ParamError(spec.name, f"{label} must be a string, a number or a list")
        return value
    if spec.kind == Kind.MAPPING:  # GenerationRequest checks the names and the numbers
        if isinstance(value, str):
            value = _json(spec.name, label, value, "object")
        if not isinstance(value, dict):
            raise ParamError(spec.name, f"{label} must be an object (JSON), got {type(value).__name__}")
        return value
    if spec.kind == Kind.KEEP_ALIVE:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ParamError(spec.name, f"{label} must be a duration such as 300, '5m', 0 or -1")
        return value
    text = _to_str(spec.name, label, value)
    if spec.max_chars is not None and len(text) > spec.max_chars:
        raise ParamError(spec.name, f"{label} must be at most {spec.max_chars} characters, got {len(text)}")
    if spec.choices is not None:
        if text.strip().lower() not in spec.choices:
            allowed = ", ".join(spec.choices)
            raise ParamError(spec.name, f"{label} must be one of {allowed}, got {shown(text)}")
        return text.strip().lower()
    return text


def word_bool(value: Any) -> bool | None:
    """A boolean as JSON or a form writes it (true/false, 1/0, yes/no, on/off); None if it is none."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
    return None


def to_bool(name: str, label: str, value: Any) -> bool:
    parsed = word_bool(value)
    if parsed is not None:
        return parsed
    hint = "; set the output format with audio_format" if label.endswith("(sent as format)") else ""
    raise ParamError(
        name, f"{label} must be a boolean (true/false, 1/0, yes/no, on/off), got {value!r}{hint}"
    )


def to_float(name: str, label: str, value: Any) -> float:
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


def to_int(name: str, label: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        number = to_float(name, label, value)
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


def _json_list(name: str, label: str, text: str) -> Any:
    return _json(name, label, text, "list")


def _json(name: str, label: str, text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ParamError(name, f"{label} is not a valid JSON {what}: {shown(text)}") from None


def _to_seed(name: str, label: str, value: Any) -> int | str:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple) and value:
        return ",".join(str(to_int(name, label, item)) for item in value)
    raise ParamError(
        name, f"{label} must be an integer or a comma-separated list of integers, got {shown(value)}"
    )


def _to_timesteps(label: str, value: Any) -> list[float]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = _json_list("timesteps", label, text)
        else:
            value = [part for part in text.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ParamError("timesteps", f"{label} must be a list of numbers or a comma-separated string")
    return [to_float("timesteps", label, item) for item in value]


def _to_classes(label: str, value: Any) -> list[str] | str:
    if isinstance(value, str) and value.strip().startswith("["):
        value = _json_list("track_classes", label, value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ParamError("track_classes", f"{label} must be a list of track names or a comma-separated string")
