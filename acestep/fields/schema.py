"""The field table as a JSON schema: one property per field, under upstream's canonical name, for
the request bodies /openapi.json documents (``/release_task``'s first).

Each property says what the field does (``FieldSpec.description``, its aliases named), its type by
kind, its bounds (the table's, else ``GenerationRequest``'s own checks), its values where the
table or the flag lists them, and its default: the caller's (a route's own defaults) else
``GenerationRequest``'s. A flag's help speaks of other flags (``--src-audio``); here they are the
fields' names, and a ``(default ...)`` of the CLI's gives way to the schema's ``default``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic_core import PydanticUndefined

from acestep.fields.spec import FieldSpec, Kind
from acestep.fields.table import FIELDS
from acestep.request import GenerationRequest

# The JSON types a value of each kind may be sent as (acestep.fields.values reads them all).
_TYPES: dict[Kind, Any] = {
    Kind.STR: "string",
    Kind.INT: "integer",
    Kind.FLOAT: "number",
    Kind.BOOL: "boolean",
    Kind.SEED: ["integer", "string"],
    Kind.TIMESTEPS: ["array", "string"],
    Kind.CLASSES: ["array", "string"],
    Kind.KEEP_ALIVE: ["string", "number"],
    Kind.NAMES: ["string", "number", "array"],
    Kind.MAPPING: "object",
}
_ITEMS = {Kind.TIMESTEPS: {"type": "number"}, Kind.CLASSES: {"type": "string"}}
# The checks of GenerationRequest's own schema a property repeats.
_CHECKS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxLength", "maxItems")
_CLI_DEFAULT = re.compile(r"\s*\(default:? [^;:()]*\)")  # "(default 1)", "(default: free)"
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
_FLAG_FIELDS = {flag: spec.name for spec in FIELDS if spec.flag for flag in spec.flag.names}
_REQUEST = GenerationRequest.model_json_schema(by_alias=False)["properties"]


def request_checks(target: str | None) -> dict[str, Any]:
    """The bounds ``GenerationRequest`` checks on a field (in an ``anyOf`` for an optional one)."""
    if target is None or target not in _REQUEST:
        return {}
    found: dict[str, Any] = {}
    for branch in (_REQUEST[target], *_REQUEST[target].get("anyOf", ())):
        found |= {key: branch[key] for key in _CHECKS if key in branch}
    return found


def request_default(target: str | None) -> Any:
    """``GenerationRequest``'s default for a field; None where it has none (or it is None)."""
    field = GenerationRequest.model_fields.get(target or "")
    if field is None or field.default is PydanticUndefined:
        return None
    return field.default


def property_schema(spec: FieldSpec, default: Any = None) -> dict[str, Any]:
    """One field as a request body documents it."""
    out: dict[str, Any] = {"type": _TYPES[spec.kind]}
    if spec.kind in _ITEMS:
        out["items"] = _ITEMS[spec.kind]
    out |= request_checks(spec.target)
    if spec.bounds is not None:
        out["minimum"], out["maximum"] = spec.bounds
    if spec.max_chars is not None:
        out["maxLength"] = spec.max_chars
    if default is not None:
        out["default"] = default
    if spec.allowed is not None and spec.kind == Kind.STR:
        allowed = list(spec.allowed)
        out["enum"] = allowed if default in (None, *allowed) else [default, *allowed]  # "" = free
    out["description"] = describe(spec, default is not None)
    return out


def describe(spec: FieldSpec, has_default: bool) -> str:
    text = spec.description or spec.name.replace("_", " ")
    if has_default:
        text = _CLI_DEFAULT.sub("", text)
    text = _FLAG.sub(lambda m: _FLAG_FIELDS.get(m.group(), m.group()), text)
    if spec.aliases:
        text += f". Also read as: {', '.join(spec.aliases)}"
    return text


def body_properties(specs: Iterable[FieldSpec] = FIELDS, defaults: Mapping[str, Any] | None = None) -> dict:
    """Every field of ``specs`` as a property; ``defaults`` (by canonical name) before the request's."""
    defaults = defaults or {}
    return {
        spec.name: property_schema(spec, defaults.get(spec.name, request_default(spec.target)))
        for spec in specs
    }
