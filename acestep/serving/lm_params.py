"""What ``/release_task``'s LM options do once parsed (``params.py`` parses them): the request
fields they set, with upstream's REST defaults, and the warnings for options that change nothing
here (never a silent backend or model switch). Which options are request fields is the field
table's (``acestep.fields``)."""

from __future__ import annotations

from typing import Any

from acestep.fields import LM_FEATURES, LM_KNOBS

# LM values that become GenerationRequest fields (the rest only steer which LM or backend).
_LM_REQUEST_FIELDS = tuple(spec.target for spec in (*LM_FEATURES, *LM_KNOBS) if spec.target)
REST_LM_DEFAULTS = {"lm_cfg_scale": 2.5}  # upstream's /release_task default (the library uses 2.0)


def lm_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The request fields the caller's LM options set (REST defaults first)."""
    fields = dict(REST_LM_DEFAULTS)
    fields.update({name: options[name] for name in _LM_REQUEST_FIELDS if options.get(name) is not None})
    if isinstance(fields.get("lm_top_p"), int | float) and fields["lm_top_p"] >= 1.0:
        fields["lm_top_p"] = 0.9  # upstream's /release_task maps top-p >= 1 to its default
    return fields


def lm_warnings(options: dict[str, Any], uses_lm: bool, lm_name: str | None = None) -> list[str]:
    """Say what LM options did not do (never a silent backend or model switch)."""
    if not uses_lm:
        return []
    notes = []
    backend = str(options.get("lm_backend") or "").strip().lower()
    if backend and backend != "pt":
        notes.append(f"lm_backend {backend!r}: this server runs the LM with transformers (pt)")
    wanted = str(options.get("lm_model_path") or "").strip()
    if wanted and lm_name and wanted.rstrip("/").rsplit("/", 1)[-1] != lm_name:
        notes.append(f"lm_model_path {wanted!r} is not loaded here; {lm_name} was used")
    if options.get("constrained_decoding") is False:
        notes.append("constrained_decoding false: metadata is always constrained here")
    for name in ("constrained_decoding_debug", "allow_lm_batch"):
        if options.get(name) is not None:
            notes.append(f"{name}: no effect here (items are decoded one by one, each from its own seed)")
    return notes
