"""``/release_task`` parameter parsing: aliases, the three lookup places, form strings and refusals.

Names and aliases are upstream's (docs/api.md); refusals as patches/0022 describes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from acestep import GenerationRequest
from acestep.serving.params import (
    ParamError,
    ReleaseParams,
    parse_release_params,
    parse_task_id_list,
)

Check = Callable[[ReleaseParams], Any]


def _field(name: str) -> Check:
    return lambda p: p.fields.get(name)


def _lm(name: str) -> Check:
    return lambda p: p.lm_options.get(name)


def _ignored(name: str) -> Check:
    return lambda p: name in p.ignored


# canonical -> (aliases from the spec table, value sent, where it lands, what it should be there)
ALIASES: dict[str, tuple[list[str], Any, Check, Any]] = {
    "prompt": (["caption"], "lofi beat", _field("caption"), "lofi beat"),
    "analysis_only": (["analysisOnly"], "true", lambda p: p.lm_features, ["analysis_only"]),
    "full_analysis_only": (["fullAnalysisOnly"], True, lambda p: p.lm_features, ["full_analysis_only"]),
    "sample_mode": (["sampleMode"], "1", lambda p: p.lm_features, ["sample_mode"]),
    "sample_query": (["sampleQuery", "description", "desc"], "a sad song", _lm("sample_query"), "a sad song"),
    "use_format": (["useFormat", "format"], "yes", lambda p: p.lm_features, ["use_format"]),
    "model": (
        ["model_name", "modelName", "dit_model", "ditModel"],
        "acestep-v15-base",
        lambda p: p.model,
        "acestep-v15-base",
    ),
    "key_scale": (["keyscale", "keyScale", "key"], "F# minor", _field("key_scale"), "F# minor"),
    "time_signature": (["timesignature", "timeSignature"], "3", _field("time_signature"), "3"),
    "audio_duration": (
        ["duration", "audioDuration", "target_duration", "targetDuration"],
        "30",
        _field("audio_duration"),
        30.0,
    ),
    "vocal_language": (["vocalLanguage", "language"], "ja", _field("vocal_language"), "ja"),
    "inference_steps": (["inferenceSteps"], "20", _field("inference_steps"), 20),
    "guidance_scale": (["guidanceScale"], "5.5", _field("guidance_scale"), 5.5),
    "use_random_seed": (["useRandomSeed"], "false", _field("use_random_seed"), False),
    "audio_cover_strength": (["audioCoverStrength"], "0.25", _field("audio_cover_strength"), 0.25),
    "reference_audio_path": (
        ["ref_audio_path", "referenceAudioPath", "refAudioPath"],
        "/in/ref.wav",
        _field("reference_audio"),
        "/in/ref.wav",
    ),
    "src_audio_path": (
        ["ctx_audio_path", "sourceAudioPath", "srcAudioPath", "ctxAudioPath"],
        "/in/src.wav",
        _field("src_audio"),
        "/in/src.wav",
    ),
    "task_type": (["taskType"], "repaint", _field("task_type"), "repaint"),
    "infer_method": (["inferMethod"], "SDE", _field("infer_method"), "sde"),
    "use_tiled_decode": (["useTiledDecode"], "false", _ignored("use_tiled_decode"), True),
    "constrained_decoding": (
        ["constrainedDecoding", "constrained"],
        "off",
        _lm("constrained_decoding"),
        False,
    ),
    "constrained_decoding_debug": (
        ["constrainedDecodingDebug"],
        "on",
        _lm("constrained_decoding_debug"),
        True,
    ),
    "use_cot_caption": (["cot_caption", "cot-caption"], "true", _ignored("use_cot_caption"), True),
    "use_cot_language": (["cot_language", "cot-language"], "y", _ignored("use_cot_language"), True),
    "is_format_caption": (["isFormatCaption"], "true", _ignored("is_format_caption"), True),
    "allow_lm_batch": (["allowLmBatch", "parallel_thinking"], "no", _lm("allow_lm_batch"), False),
}
ALIAS_CASES = [
    pytest.param(name, alias, value, check, expected, id=alias)
    for name, (aliases, value, check, expected) in ALIASES.items()
    for alias in (name, *aliases)
]


@pytest.mark.parametrize(("canonical", "alias", "value", "check", "expected"), ALIAS_CASES)
def test_every_alias_resolves_to_its_canonical_field(
    canonical: str, alias: str, value: Any, check: Check, expected: Any
) -> None:
    assert check(parse_release_params({alias: value})) == expected


@pytest.mark.parametrize(("canonical", "alias", "value", "check", "expected"), ALIAS_CASES)
def test_every_alias_is_also_found_in_param_obj_and_metas(
    canonical: str, alias: str, value: Any, check: Check, expected: Any
) -> None:
    assert check(parse_release_params({"param_obj": {alias: value}})) == expected
    assert check(parse_release_params({"user_metadata": json.dumps({alias: value})})) == expected


def test_aliases_are_not_unknown_keys() -> None:
    params = parse_release_params(
        {"caption": "x", "keyScale": "C major", "ai_token": "k", "task_id_list": "[]"}
    )
    assert params.ignored == []


# --- lookup order -----------------------------------------------------------------------------


def test_top_level_wins_over_param_obj_which_wins_over_metas() -> None:
    body = {
        "bpm": 100,
        "param_obj": {"bpm": 110, "guidance_scale": 5},
        "metas": {"bpm": 120, "guidance_scale": 6, "shift": 2},
    }
    fields = parse_release_params(body).fields
    assert fields == {"bpm": 100, "guidance_scale": 5.0, "shift": 2.0}


def test_any_alias_at_the_top_level_wins_over_the_canonical_name_deeper() -> None:
    body = {"caption": "top", "param_obj": {"prompt": "nested"}}
    assert parse_release_params(body).fields["caption"] == "top"


def test_the_canonical_name_wins_over_an_alias_in_the_same_place() -> None:
    assert parse_release_params({"prompt": "a", "caption": "b"}).fields["caption"] == "a"
    assert (
        parse_release_params({"src_audio_path": "/a.wav", "src_audio": "/b.wav"}).fields["src_audio"]
        == "/a.wav"
    )


def test_empty_strings_and_nulls_count_as_not_sent() -> None:
    body = {
        "prompt": "",
        "bpm": None,
        "key_scale": "  ",
        "param_obj": {"prompt": "from param_obj", "bpm": "95"},
    }
    fields = parse_release_params(body).fields
    assert fields == {"caption": "from param_obj", "bpm": 95}
    assert parse_release_params({"batch_size": None, "audio_format": ""}).fields == {}


def test_only_the_first_non_empty_metas_dict_is_read() -> None:
    body = {"metas": "", "meta": {}, "metadata": {"bpm": 90}, "user_metadata": {"key_scale": "C major"}}
    assert parse_release_params(body).fields == {"bpm": 90}
    assert parse_release_params({"userMetadata": {"bpm": 80}}).fields == {"bpm": 80}


def test_param_obj_and_metas_may_be_json_strings() -> None:
    body = {"param_obj": json.dumps({"inference_steps": 12}), "metas": json.dumps({"keyscale": "A minor"})}
    assert parse_release_params(body).fields == {"inference_steps": 12, "key_scale": "A minor"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"param_obj": "{not json"}, "param_obj"),
        ({"param_obj": "[1, 2]"}, "param_obj"),
        ({"param_obj": 5}, "param_obj"),
        ({"metas": "{bpm: 1"}, "metas"),
        ({"meta": ["bpm"]}, "meta"),
    ],
)
def test_unreadable_param_obj_or_metas_is_an_error_naming_it(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_release_params(body)
    assert exc.value.field == field


def test_unknown_top_level_keys_are_listed_not_rejected() -> None:
    params = parse_release_params({"prompt": "x", "client_version": "2.1", "webhook": "http://x"})
    assert params.fields == {"caption": "x"}
    assert params.ignored == ["client_version", "webhook"]


def test_unknown_keys_inside_metas_are_not_listed() -> None:
    assert parse_release_params({"metas": {"genres": "rock", "bpm": 100}}).ignored == []


# --- form strings -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "Y", "on", " On "])
def test_true_strings(text: str) -> None:
    assert parse_release_params({"use_random_seed": text}).fields["use_random_seed"] is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "N", "off"])
def test_false_strings(text: str) -> None:
    assert parse_release_params({"enable_normalization": text}).fields["enable_normalization"] is False


def test_numbers_from_strings() -> None:
    body = {
        "inference_steps": "16",
        "batch_size": "3.0",
        "guidance_scale": "4.5",
        "shift": "1",
        "repainting_start": "-2.5",
        "audio_duration": "-1",
        "cfg_interval_end": "0.9",
    }
    assert parse_release_params(body).fields == {
        "inference_steps": 16,
        "batch_size": 3,
        "guidance_scale": 4.5,
        "shift": 1.0,
        "repainting_start": -2.5,
        "audio_duration": -1.0,
        "cfg_interval_end": 0.9,
    }


def test_zero_or_negative_duration_passes_through_as_auto() -> None:
    assert parse_release_params({"audio_duration": 0}).to_request().audio_duration == 0.0
    assert parse_release_params({"duration": "-1"}).to_request().audio_duration == -1.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1, 0.5, 0", [1.0, 0.5, 0.0]), ("[1, 0.6, 0.2]", [1.0, 0.6, 0.2]), ([1, "0.3", 0.0], [1.0, 0.3, 0.0])],
)
def test_timesteps_from_a_list_or_a_string(value: Any, expected: list[float]) -> None:
    params = parse_release_params({"timesteps": value})
    assert params.fields["timesteps"] == expected
    assert params.to_request().timesteps == expected


def test_track_classes_from_a_json_string_or_a_list() -> None:
    assert parse_release_params({"track_classes": '["drums", "bass"]'}).fields["track_classes"] == [
        "drums",
        "bass",
    ]
    assert parse_release_params({"complete_track_classes": "drums,bass"}).to_request().track_classes == [
        "drums",
        "bass",
    ]


def test_a_number_sent_for_a_text_field_reads_as_text() -> None:
    assert parse_release_params({"time_signature": 4}).to_request().time_signature == "4"


def test_na_from_echoed_result_metas_means_unset_for_numbers() -> None:
    assert (
        parse_release_params({"metas": {"bpm": "N/A", "duration": "N/A", "keyscale": "N/A"}}).to_request().bpm
        is None
    )
    assert parse_release_params({"bpm": "N/A", "param_obj": {"bpm": 128}}).fields == {"bpm": 128}


def test_a_file_upload_left_under_an_upload_key_is_not_a_parameter() -> None:
    params = parse_release_params({"src_audio": object(), "ref_audio": object()})
    assert params.fields == {}
    assert params.ignored == []


# --- errors name the field --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"useRandomSeed": "maybe"}, "use_random_seed"),
        ({"thinking": "2"}, "thinking"),
        ({"enable_normalization": 2}, "enable_normalization"),
        ({"inferenceSteps": "abc"}, "inference_steps"),
        ({"inference_steps": "8.5"}, "inference_steps"),
        ({"batch_size": True}, "batch_size"),
        ({"guidance_scale": "high"}, "guidance_scale"),
        ({"shift": "nan"}, "shift"),
        ({"targetDuration": "inf"}, "audio_duration"),
        ({"bpm": "fast"}, "bpm"),
        ({"lm_temperature": "hot"}, "lm_temperature"),
        ({"lm_top_k": "1.5"}, "lm_top_k"),
        ({"constrained": "sometimes"}, "constrained_decoding"),
        ({"lm_backend": "tensorrt"}, "lm_backend"),
        ({"timesteps": "1, x"}, "timesteps"),
        ({"timesteps": "[1, 0.5"}, "timesteps"),
        ({"timesteps": {"a": 1}}, "timesteps"),
        ({"seed": True}, "seed"),
        ({"seed": {"value": 1}}, "seed"),
        ({"seed": [1, "x"]}, "seed"),
        ({"caption": ["a"]}, "prompt"),
        ({"track_classes": {"drums": 1}}, "track_classes"),
        ({"keepAlive": True}, "keep_alive"),
        ({"ai_token": 1234}, "ai_token"),
        ({"infer_method": "euler"}, "infer_method"),
        ({"param_obj": {"guidanceScale": "x"}}, "guidance_scale"),
    ],
)
def test_a_value_that_cannot_be_understood_is_an_error_naming_the_field(
    body: dict[str, Any], field: str
) -> None:
    with pytest.raises(ParamError) as exc:
        parse_release_params(body)
    assert exc.value.field == field
    assert field in str(exc.value)


def test_format_is_use_format_unless_it_names_an_audio_format() -> None:
    # Clients send `format: "mp3"` meaning the file format; upstream read it as use_format=false.
    assert parse_release_params({"format": "mp3"}).fields == {"audio_format": "mp3"}
    assert parse_release_params({"format": "flac", "audio_format": "wav"}).fields == {"audio_format": "wav"}
    with pytest.raises(ParamError) as exc:
        parse_release_params({"format": "maybe"})
    assert exc.value.field == "use_format"
    assert parse_release_params({"format": "true"}).lm_features == ["use_format"]
    params = parse_release_params({"format": "false", "audio_format": "mp3"})
    assert params.fields == {"audio_format": "mp3"}
    assert params.lm_features == []


def test_sde_and_adg_are_request_fields_now() -> None:
    """infer_method and use_adg were refused (sde, adg) or ignored (ode, false); they are sampler
    fields since issue 22 and reach the request as sent."""
    params = parse_release_params({"infer_method": "SDE", "use_adg": "true"})
    assert params.fields == {"infer_method": "sde", "use_adg": True}
    assert params.ignored == []
    request = params.to_request()
    assert (request.infer_method, request.use_adg, request.guidance) == ("sde", True, "adg")


def test_a_non_object_body_is_an_error() -> None:
    with pytest.raises(ParamError) as exc:
        parse_release_params(["prompt", "x"])  # type: ignore[arg-type]
    assert exc.value.field == "body"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inference_steps": 0}, "inference_steps"),
        ({"language": "klingon"}, "vocal_language"),
        ({"key": "H major"}, "key_scale"),
        ({"caption": "x" * 5000}, "prompt"),
        ({"audio_format": "ogg"}, "audio_format"),
        ({"seed": "1,two"}, "seed"),
        (
            {"ctx_audio_path": "/a.wav", "task_type": "cover", "repainting_start": 5, "repainting_end": 2},
            "request",
        ),
    ],
)
def test_to_request_turns_validation_errors_into_param_errors(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_release_params(body).to_request()
    assert exc.value.field == field


# --- seeds (defect 1) -------------------------------------------------------------------------


def test_a_written_seed_is_honoured() -> None:
    assert GenerationRequest(**parse_release_params({"seed": "42"}).fields).wants_random_seed is False
    assert parse_release_params({"seed": 42}).fields == {"seed": 42}
    assert parse_release_params({"param_obj": {"seed": 7.0}}).to_request().seed == 7


def test_seed_minus_one_or_an_explicit_random_flag_still_draws() -> None:
    assert parse_release_params({"seed": "-1"}).to_request().wants_random_seed is True
    assert parse_release_params({}).to_request().wants_random_seed is True
    assert parse_release_params({"seed": 5, "useRandomSeed": "true"}).to_request().wants_random_seed is True


def test_seed_lists_pass_through() -> None:
    assert parse_release_params({"seed": "1, 2"}).to_request().seed == "1, 2"
    assert parse_release_params({"seed": [3, 4]}).fields == {"seed": "3,4"}


# --- whole bodies -----------------------------------------------------------------------------


def test_a_realistic_upstream_json_body_builds_a_request() -> None:
    body = {
        "prompt": "melancholic piano ballad, soft female vocals",
        "lyrics": "[verse]\nRain on the window",
        "thinking": False,
        "bpm": 72,
        "key_scale": "D minor",
        "time_signature": "4",
        "audio_duration": 45,
        "vocal_language": "en",
        "inference_steps": 8,
        "guidance_scale": 7.0,
        "use_random_seed": False,
        "seed": 1234,
        "batch_size": 1,
        "audio_format": "wav",
        "use_tiled_decode": True,
        "lm_temperature": 0.85,
        "infer_method": "ode",
        "ai_token": "secret",
        "model": "acestep-v15-turbo",
    }
    params = parse_release_params(body)
    request = params.to_request()
    assert request.caption == "melancholic piano ballad, soft female vocals"
    assert (request.bpm, request.key_scale, request.audio_duration) == (72, "D minor", 45.0)
    assert (request.seed, request.wants_random_seed, request.batch_size) == (1234, False, 1)
    assert request.audio_format == "wav"
    assert params.ai_token == "secret"
    assert params.model == "acestep-v15-turbo"
    assert params.lm_features == []
    assert params.ignored == ["use_tiled_decode", "lm_temperature"]
    assert "ai_token" not in params.fields and "model" not in params.fields


def test_a_realistic_form_body_builds_a_request() -> None:
    form = {
        "caption": "drum and bass, rolling breaks",
        "lyrics": "",
        "taskType": "repaint",
        "ctx_audio_path": "/tmp/ctx_audio_abc.wav",
        "repainting_start": "4.5",
        "repainting_end": "12",
        "inferenceSteps": "27",
        "guidanceScale": "3.5",
        "useRandomSeed": "false",
        "seed": "99,100",
        "batch_size": "2",
        "audio_format": "flac",
        "useTiledDecode": "true",
        "param_obj": '{"shift": "2.0", "timesteps": "1,0.75,0.5,0.25"}',
        "metas": '{"bpm": "174", "timesignature": "4/4", "duration": "N/A"}',
        "dit_model": "",
    }
    params = parse_release_params(form)
    request = params.to_request()
    assert request.task_type == "repaint" and request.src_audio == "/tmp/ctx_audio_abc.wav"
    assert (request.repainting_start, request.repainting_end) == (4.5, 12.0)
    assert (request.inference_steps, request.guidance_scale, request.shift) == (27, 3.5, 2.0)
    assert request.timesteps == [1.0, 0.75, 0.5, 0.25]
    assert (request.bpm, request.time_signature, request.audio_duration) == (174, "4", -1.0)
    assert request.seed == "99,100" and request.wants_random_seed is False
    assert params.model is None
    assert "audio_duration" not in params.fields and "lyrics" not in params.fields


# --- task_id_list -----------------------------------------------------------------------------


def test_task_id_list_accepts_an_array_or_its_json_text() -> None:
    assert parse_task_id_list(["a", " b "]) == ["a", "b"]
    assert parse_task_id_list('["a", "b"]') == ["a", "b"]
    assert parse_task_id_list("[]") == []


@pytest.mark.parametrize("value", [None, "abc", '{"id": "a"}', '"a"', {"a": 1}, [1, 2], "[1]", 5])
def test_anything_else_is_an_error_naming_task_id_list(value: Any) -> None:
    with pytest.raises(ParamError) as exc:
        parse_task_id_list(value)
    assert exc.value.field == "task_id_list"


def test_the_module_does_not_import_torch() -> None:
    code = "import sys, acestep.serving.params; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
