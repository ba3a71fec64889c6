"""``/release_task``'s LM parameters: which switches ask for the LM (defect 5), which are only
options of an LM run, and how they become request fields (docs/api.md, docs/lm.md)."""

from __future__ import annotations

from acestep.serving.lm_params import lm_fields, lm_warnings
from acestep.serving.params import parse_release_params


def test_upstream_defaults_do_not_ask_for_the_lm() -> None:
    body = {
        "thinking": False,
        "sample_mode": "false",
        "use_format": "0",
        "analysis_only": "off",
        "full_analysis_only": "no",
        "sample_query": "",
        "use_cot_caption": "false",
        "use_cot_language": 0,
    }
    assert parse_release_params(body).lm_features == []
    assert parse_release_params({"prompt": "x"}).lm_features == []


def test_explicit_true_switches_ask_for_the_lm_in_a_fixed_order() -> None:
    body = {"use_cot_language": "true", "thinking": "true", "use_format": True, "cot_caption": "1"}
    params = parse_release_params(body)
    assert params.lm_features == ["thinking", "use_format"]
    # With an LM feature the optional switches shape the run (they are not "ignored")...
    assert not {"use_cot_caption", "use_cot_language"} & set(params.ignored)
    assert lm_fields(params.lm_options) | {"use_cot_caption": True} == lm_fields(params.lm_options)
    # ...alone they run nothing, and say so.
    alone = parse_release_params({"use_cot_language": "true", "cot_caption": "1"})
    assert alone.lm_features == [] and {"use_cot_caption", "use_cot_language"} <= set(alone.ignored)


def test_lm_options_become_request_fields_with_rest_defaults() -> None:
    params = parse_release_params({"thinking": True, "lm_top_p": 1.5, "lm_temperature": "0.5"})
    fields = lm_fields(params.lm_options)
    assert fields["thinking"] is True and fields["lm_temperature"] == 0.5
    assert fields["lm_cfg_scale"] == 2.5  # upstream's REST default (the library's is 2.0)
    assert fields["lm_top_p"] == 0.9  # upstream's /release_task: >= 1 becomes the default


def test_a_non_empty_sample_query_means_sample_mode_once() -> None:
    assert parse_release_params({"desc": "upbeat pop"}).lm_features == ["sample_mode"]
    assert parse_release_params({"sample_mode": "true", "sampleQuery": "jazz"}).lm_features == ["sample_mode"]
    assert parse_release_params({"description": "   "}).lm_features == []


def test_lm_knobs_never_reach_the_request_and_are_ignored_without_an_lm_feature() -> None:
    body = {
        "lm_temperature": "0.7",
        "lm_top_p": 1.0,
        "lm_top_k": "40",
        "lm_negative_prompt": "noise",
        "lm_backend": "PT",
        "parallel_thinking": "true",
        "lm_repetition_penalty": "1.1",
    }
    params = parse_release_params(body)
    assert params.fields == {}
    assert params.lm_options == {
        "lm_temperature": 0.7,
        "lm_top_k": 40,
        "lm_top_p": 1.0,
        "lm_repetition_penalty": 1.1,
        "lm_negative_prompt": "noise",
        "lm_backend": "pt",
        "allow_lm_batch": True,
    }
    assert set(params.ignored) == {
        "lm_temperature",
        "lm_top_p",
        "lm_top_k",
        "lm_negative_prompt",
        "lm_backend",
        "allow_lm_batch",
        "lm_repetition_penalty",
    }
    with_lm = parse_release_params({**body, "thinking": "true"})
    assert with_lm.ignored == []
    assert with_lm.fields == {}


def test_lm_options_without_effect_are_named_never_silent() -> None:
    options = parse_release_params(
        {"thinking": True, "lm_backend": "vllm", "lm_model_path": "acestep-5Hz-lm-4B", "allow_lm_batch": True}
    ).lm_options
    notes = " ".join(lm_warnings(options, uses_lm=True, lm_name="acestep-5Hz-lm-1.7B"))
    assert "vllm" in notes and "acestep-5Hz-lm-4B" in notes and "allow_lm_batch" in notes
    assert lm_warnings(options, uses_lm=False) == []  # without an LM run they are "ignored" instead
