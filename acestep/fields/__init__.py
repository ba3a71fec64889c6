"""Every request field and its upstream aliases, declared once (``table``), and how a sent value
is read by its kind (``values``). The REST lookup, the LM options, the CLI flags and the form
schemas are derived from here; ``GenerationRequest`` (``acestep.request``) checks the values."""

from acestep.fields.lm_table import LM_BACKENDS
from acestep.fields.spec import NUMERIC_KINDS, FieldSpec, Flag, Group, Kind
from acestep.fields.table import (
    BY_NAME,
    FIELDS,
    GENERATION,
    LM_FEATURES,
    LM_KNOBS,
    MAX_MODEL_CHARS,
    MODEL,
    NO_EFFECT,
    UPSTREAM_NAME,
)
from acestep.fields.values import ParamError, coerce, word_bool

__all__ = [
    "BY_NAME",
    "FIELDS",
    "GENERATION",
    "LM_BACKENDS",
    "LM_FEATURES",
    "LM_KNOBS",
    "MAX_MODEL_CHARS",
    "MODEL",
    "NO_EFFECT",
    "NUMERIC_KINDS",
    "UPSTREAM_NAME",
    "FieldSpec",
    "Flag",
    "Group",
    "Kind",
    "ParamError",
    "coerce",
    "word_bool",
]
