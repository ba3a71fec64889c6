"""What one entry of the field table says: a request field's names, kind, bounds and CLI flag."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """How a sent value is read (``acestep.fields.values``). A ``StrEnum``: it equals its word."""

    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    SEED = "seed"  # an integer or a comma list of integers
    TIMESTEPS = "timesteps"  # a list of numbers, as a list, JSON text or a comma list
    CLASSES = "classes"  # track names, as a list, JSON text or a comma list
    KEEP_ALIVE = "keep_alive"  # a duration, 0 or -1 (acestep.tasks.parse_keep_alive)
    NAMES = "names"  # a name, a comma list or a JSON list (LoRA adapters and their scales)
    MAPPING = "mapping"  # an object of named numbers, as JSON or JSON text (guidance_params)


NUMERIC_KINDS = frozenset({Kind.INT, Kind.FLOAT, Kind.SEED, Kind.TIMESTEPS})
# The JSON-schema type a form documents for each kind (OpenAPI bodies of routes that parse their own).
_SCHEMA_TYPES = {
    Kind.INT: "integer",
    Kind.FLOAT: "number",
    Kind.BOOL: "boolean",
    Kind.SEED: "integer",
    Kind.MAPPING: "object",
}


class Group(StrEnum):
    """Where a field's value goes once parsed."""

    GENERATION = "generation"  # a GenerationRequest field, set as sent
    LM_FEATURE = "lm_feature"  # a switch that may make a job run the 5 Hz LM
    LM_KNOB = "lm_knob"  # an option of an LM run (sampling, backend, model)
    NO_EFFECT = "no_effect"  # accepted for compatibility; refused where it would have to act
    MODEL = "model"  # which DiT the caller asks for


@dataclass(frozen=True)
class Flag:
    """The field's ``acestep generate`` flag: its names and argparse options (``dest`` is the field)."""

    names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldSpec:
    """One request field, declared once: upstream's canonical name first, then its aliases."""

    name: str  # upstream's canonical REST name
    kind: Kind
    group: Group
    aliases: tuple[str, ...] = ()
    target: str | None = None  # the GenerationRequest field it sets, if any
    max_chars: int | None = None  # for a "str" that is no GenerationRequest field (those bound it)
    bounds: tuple[float, float] | None = None  # inclusive range, from acestep.tasks
    choices: tuple[str, ...] | None = None  # for a "str" no GenerationRequest field checks
    flag: Flag | None = None
    doc: str | None = None  # what it does, where the flag's help has no (or a CLI-only) word for it

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def description(self) -> str:
        """What the field does: ``doc``, else the flag's help as ``--help`` prints it."""
        if self.doc is not None:
            return self.doc
        options = self.flag.options if self.flag is not None else {}
        text = str(options.get("help") or "")
        choices = options.get("choices")
        text = text.replace("%(default)s", str(options.get("default")))
        return text.replace("%(choices)s", ", ".join(map(str, choices or ())))

    @property
    def allowed(self) -> tuple[str, ...] | None:
        """The values it takes, where the table or the flag lists them."""
        flag_choices = self.flag.options.get("choices") if self.flag is not None else None
        found = self.choices or flag_choices
        return tuple(map(str, found)) if found else None

    def schema(self) -> dict[str, Any]:
        """The field as a form documents it (JSON schema): its type, bounds, values and meaning."""
        out: dict[str, Any] = {"type": _SCHEMA_TYPES.get(self.kind, "string")}
        if self.bounds is not None:
            out["minimum"], out["maximum"] = self.bounds
        if self.allowed is not None and self.kind == Kind.STR:
            out["enum"] = list(self.allowed)
        if self.max_chars is not None:
            out["maxLength"] = self.max_chars
        out["description"] = self.description or self.name.replace("_", " ")
        return out
