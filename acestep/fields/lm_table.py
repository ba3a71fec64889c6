"""The field table's 5 Hz LM entries: the switches that make a job run the LM (``LM_FEATURES``)
and the options of that run (``LM_KNOBS``), with upstream's REST aliases and the ``acestep
generate`` flags. ``acestep.fields.table`` adds them to ``FIELDS``.
"""

from __future__ import annotations

from typing import Any

from acestep.fields.spec import FieldSpec, Flag, Group, Kind
from acestep.request import GenerationRequest
from acestep.tasks import MAX_NAME_CHARS, MAX_PATH_CHARS

LM_BACKENDS = ("vllm", "pt", "mlx")
_FLAG_TYPES = {Kind.INT: int, Kind.FLOAT: float, Kind.STR: str}


def _default(name: str) -> Any:
    return GenerationRequest.model_fields[name].default


def _flag(*names: str, **options: Any) -> Flag:
    return Flag(names, options)


def _lm(group: Group, name: str, kind: Kind, *aliases: str, request: bool = True, **extra: Any) -> FieldSpec:
    return FieldSpec(name, kind, group, aliases, name if request else None, **extra)


def _sampling(name: str, kind: Kind, help: str) -> FieldSpec:
    """An LM sampling knob: a request field of the same name, with a flag that shows its default."""
    flag = _flag(
        f"--{name.replace('_', '-')}",
        type=_FLAG_TYPES[kind],
        default=None,
        help=f"{help} (default {_default(name)!r})",
    )
    return _lm(Group.LM_KNOB, name, kind, flag=flag)


def _switch(name: str, *aliases: str, help: str, doc: str) -> FieldSpec:
    """An upstream switch that defaults to true; the CLI's flag (``help``) turns it off, the
    request field (``doc``) says what true does."""
    flag = _flag(
        f"--no-{name.removeprefix('use_').replace('_', '-')}", action="store_false", default=None, help=help
    )
    return _lm(Group.LM_FEATURE, name, Kind.BOOL, *aliases, flag=flag, doc=doc)


_ONLY_WITH_LM = "when thinking, sample mode or use_format runs the LM (alone it runs nothing)"
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
        doc=f"the LM may rewrite the caption, {_ONLY_WITH_LM}",
    ),
    _switch(
        "use_cot_language",
        "cot_language",
        "cot-language",
        help="the LM does not choose the vocal language",
        doc=f"the LM may choose the vocal language, {_ONLY_WITH_LM}",
    ),
    _switch(
        "use_cot_metas",
        "cot_metas",
        "cot-metas",
        help="the LM does not fill bpm, key, time signature and duration",
        doc=f"the LM may fill bpm, key, time signature and duration left free, {_ONLY_WITH_LM}",
    ),
    _lm(
        Group.LM_FEATURE,
        "sample_mode",
        Kind.BOOL,
        "sampleMode",
        doc="the LM writes the caption, lyrics and metadata from sample_query (or from nothing)",
    ),
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
    _lm(
        Group.LM_FEATURE,
        "analysis_only",
        Kind.BOOL,
        "analysisOnly",
        request=False,
        doc="upstream's audio understanding: refused (400) in this version",
    ),
    _lm(
        Group.LM_FEATURE,
        "full_analysis_only",
        Kind.BOOL,
        "fullAnalysisOnly",
        request=False,
        doc="upstream's audio understanding: refused (400) in this version",
    ),
)
LM_KNOBS = (
    _sampling("lm_temperature", Kind.FLOAT, "LM sampling temperature"),
    _sampling("lm_cfg_scale", Kind.FLOAT, "LM classifier-free guidance scale"),
    _sampling("lm_top_k", Kind.INT, "LM top-k sampling (0: off)"),
    _sampling("lm_top_p", Kind.FLOAT, "LM nucleus sampling"),
    _sampling("lm_repetition_penalty", Kind.FLOAT, "LM repetition penalty"),
    _sampling("lm_negative_prompt", Kind.STR, "what the LM's guidance steers away from"),
    # Which LM and how it runs: they steer the LM stage, they are no request fields.
    _lm(
        Group.LM_KNOB,
        "lm_model_path",
        Kind.STR,
        request=False,
        max_chars=MAX_PATH_CHARS,
        doc="the LM folder asked for; only the one this server loaded runs (another is a warning)",
    ),
    _lm(
        Group.LM_KNOB,
        "lm_backend",
        Kind.STR,
        request=False,
        max_chars=MAX_NAME_CHARS,
        choices=LM_BACKENDS,
        doc="upstream's LM backend; this server runs the LM with transformers (pt), another is a warning",
    ),
    _lm(
        Group.LM_KNOB,
        "constrained_decoding",
        Kind.BOOL,
        "constrainedDecoding",
        "constrained",
        request=False,
        doc="upstream's switch for constrained decoding: metadata is always constrained here (false warns)",
    ),
    _lm(
        Group.LM_KNOB,
        "constrained_decoding_debug",
        Kind.BOOL,
        "constrainedDecodingDebug",
        request=False,
        doc="upstream's debug output of constrained decoding: no effect here",
    ),
    _lm(
        Group.LM_KNOB,
        "allow_lm_batch",
        Kind.BOOL,
        "allowLmBatch",
        "parallel_thinking",
        request=False,
        doc="upstream's batched LM runs: no effect here (each item is decoded alone, from its own seed)",
    ),
)
