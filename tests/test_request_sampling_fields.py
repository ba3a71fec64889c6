"""The sampler and editing fields of issue 22 (``acestep.request_sampling``, ``acestep.request_edits``):
declared once on the request, checked there, and reachable from REST, the CLI, MCP and the UI."""

from __future__ import annotations

import argparse
import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from acestep import cli
from acestep.errors import validation_message
from acestep.fields import BY_NAME, GENERATION, NO_EFFECT
from acestep.request import GenerationRequest
from acestep.serving.params import ParamError, parse_release_params

SOURCE = {"src_audio": "/in/song.wav"}
# Upstream's names and defaults (generate_music and the /release_task model).
UPSTREAM_DEFAULTS = {
    "sampler_mode": "euler",
    "infer_method": "ode",
    "velocity_norm_threshold": 0.0,
    "velocity_ema_factor": 0.0,
    "use_adg": False,
    "guidance_variant": "apg_classic",
    "guidance_params": None,
    "dcw_enabled": None,
    "dcw_mode": "double",
    "dcw_scaler": 0.05,
    "dcw_high_scaler": 0.02,
    "dcw_wavelet": "haar",
    "retake_seed": None,
    "retake_variance": 0.0,
    "latent_shift": 0.0,
    "latent_rescale": 1.0,
    "fade_in_duration": 0.0,
    "fade_out_duration": 0.0,
    "cover_noise_strength": 0.0,
    "repaint_mode": "balanced",
    "repaint_strength": 0.5,
    "repaint_latent_crossfade_frames": 10,
    "repaint_wav_crossfade_sec": 0.0,
    "chunk_mask_mode": "auto",
    "flow_edit_morph": False,
    "flow_edit_source_caption": "",
    "flow_edit_source_lyrics": "",
    "flow_edit_n_min": 0.0,
    "flow_edit_n_max": 1.0,
    "flow_edit_n_avg": 1,
    "global_caption": "",
}


def _refusal(**values: Any) -> str:
    with pytest.raises(ValidationError) as exc:
        GenerationRequest(**values)
    return validation_message(exc.value)


def test_the_defaults_are_upstreams() -> None:
    request = GenerationRequest()
    assert {name: getattr(request, name) for name in UPSTREAM_DEFAULTS} == UPSTREAM_DEFAULTS
    assert request.field_notes == []
    assert request.guidance == "apg_classic"


@pytest.mark.parametrize(
    ("values", "field", "needle"),
    [
        ({"sampler_mode": "rk4"}, "sampler_mode", "one of euler, heun"),
        ({"infer_method": "euler"}, "infer_method", "one of ode, sde"),
        ({"guidance_variant": "pag"}, "guidance_variant", "apg_classic, cfg, adg"),
        ({"dcw_mode": "mid"}, "dcw_mode", "low, high, double, pix"),
        ({"dcw_wavelet": "morl"}, "dcw_wavelet", "haar"),
        ({"repaint_mode": "gentle"}, "repaint_mode", "conservative, balanced, aggressive"),
        ({"chunk_mask_mode": "manual"}, "chunk_mask_mode", "auto, explicit"),
        ({"velocity_norm_threshold": -1}, "velocity_norm_threshold", ">= 0"),
        ({"velocity_ema_factor": 1.5}, "velocity_ema_factor", "<= 1"),
        ({"dcw_scaler": 2}, "dcw_scaler", "<= 1"),
        ({"retake_variance": -0.1}, "retake_variance", ">= 0"),
        ({"retake_seed": "one"}, "retake_seed", "comma-separated list of integers"),
        ({"cover_noise_strength": 1.2}, "cover_noise_strength", "<= 1"),
        ({"repaint_strength": 2}, "repaint_strength", "<= 1"),
        ({"repaint_latent_crossfade_frames": 10_000}, "repaint_latent_crossfade_frames", "<= 250"),
        ({"repaint_wav_crossfade_sec": -1}, "repaint_wav_crossfade_sec", ">= 0"),
        ({"flow_edit_n_avg": 0}, "flow_edit_n_avg", ">= 1"),
        ({"flow_edit_n_max": 1.5}, "flow_edit_n_max", "<= 1"),
        ({"latent_rescale": 0}, "latent_rescale", "greater than 0"),
        ({"latent_shift": 99}, "latent_shift", "<= 5"),
        ({"fade_in_duration": 601}, "fade_in_duration", "<= 600"),
        ({"fade_out_duration": -2}, "fade_out_duration", ">= 0"),
        ({"global_caption": "x" * 5000}, "global_caption", "at most 4096"),
        ({"guidance_params": {"eta": "high"}}, "guidance_params", "must be a number"),
        ({"guidance_params": {"eta": 1e9}}, "guidance_params", "within ±100"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_field(values: dict, field: str, needle: str) -> None:
    message = _refusal(**values)
    words = needle.replace(">= ", "greater than or equal to ").replace("<= ", "less than or equal to ")
    assert message.startswith(f"{field}: ") and words in message, message


def test_choices_ignore_case_and_spaces() -> None:
    request = GenerationRequest(sampler_mode=" Heun ", dcw_mode="LOW", repaint_mode="Aggressive")
    assert (request.sampler_mode, request.dcw_mode, request.repaint_mode) == ("heun", "low", "aggressive")


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (
            {"flow_edit_n_min": 0.8, "flow_edit_n_max": 0.2},
            "flow_edit_n_min (0.8) must be <= flow_edit_n_max",
        ),
        ({"flow_edit_morph": True}, "flow_edit_morph edits a source: send src_audio"),
        (
            {"guidance_variant": "cfg", "guidance_params": {"eta": 1}},
            "not parameters of guidance_variant 'cfg'",
        ),
        ({"guidance_params": {"angle_clip": 1}}, "not parameters of guidance_variant 'apg_classic'"),
        ({"use_adg": True, "guidance_variant": "cfg"}, "use_adg asks for adaptive dual guidance"),
    ],
)
def test_fields_that_contradict_each_other_are_refused(values: dict, needle: str) -> None:
    assert needle in _refusal(**values)


def test_use_adg_picks_the_adg_variant_and_retake_seed_reads_like_seed() -> None:
    assert GenerationRequest(use_adg=True).guidance == "adg"
    assert GenerationRequest(use_adg=True, guidance_variant="adg_w_norm").guidance == "adg_w_norm"
    params = {"eta": 0.5, "norm_threshold": 2.0, "momentum": -0.5}
    assert GenerationRequest(guidance_params=params).guidance_params == params
    assert GenerationRequest(retake_seed=7.0).retake_seed == 7
    assert GenerationRequest(retake_seed=" 1, 2 ").retake_seed == "1, 2"
    assert GenerationRequest(retake_seed="").retake_seed is None
    flow = GenerationRequest(flow_edit_morph=True, flow_edit_n_min=0.2, flow_edit_n_max=0.2, **SOURCE)
    assert flow.field_notes == []


def test_a_field_that_cannot_act_is_named_in_a_note() -> None:
    notes = GenerationRequest(
        retake_seed=3,
        dcw_enabled=False,
        dcw_wavelet="db4",
        repaint_mode="conservative",
        repaint_wav_crossfade_sec=0.2,
        flow_edit_n_avg=4,
    ).field_notes
    assert notes == [
        "retake_seed has no effect while retake_variance is 0",
        "dcw_wavelet: no effect while dcw_enabled is false",
        "repaint_mode: no effect on task 'text2music' (repaint only)",
        "repaint_wav_crossfade_sec: no effect; the crossfades follow repaint_mode and "
        "repaint_strength, as upstream",
        "flow_edit_n_avg: no effect while flow_edit_morph is false",
    ]
    repaint = GenerationRequest(
        task_type="repaint", repaint_mode="aggressive", repaint_strength=0.2, **SOURCE
    )
    assert repaint.field_notes == [
        "repaint_strength is used by repaint_mode 'balanced' only, not 'aggressive'"
    ]
    # cover noise and the global caption act on every task (the engine notes a global caption on a
    # checkpoint that is not a stem SFT one).
    lego = GenerationRequest(
        task_type="lego", track_name="drums", global_caption="funk", cover_noise_strength=0.3, **SOURCE
    )
    assert lego.field_notes == []


# --- REST: upstream's aliases, in each of the three lookup places ---


@pytest.mark.parametrize(
    ("body", "field", "expected"),
    [
        ({"samplerMode": "heun"}, "sampler_mode", "heun"),
        ({"inferMethod": "sde"}, "infer_method", "sde"),
        ({"velocityNormThreshold": "2"}, "velocity_norm_threshold", 2.0),
        ({"param_obj": {"velocityEmaFactor": 0.1}}, "velocity_ema_factor", 0.1),
        ({"use_adg": "yes"}, "use_adg", True),
        ({"guidanceVariant": "cfg"}, "guidance_variant", "cfg"),
        ({"guidanceParams": '{"eta": 0.25}'}, "guidance_params", {"eta": 0.25}),
        ({"metas": {"dcw_enabled": "false"}}, "dcw_enabled", False),
        ({"dcw_mode": "HIGH"}, "dcw_mode", "high"),
        ({"dcw_scaler": "0.1"}, "dcw_scaler", 0.1),
        ({"dcw_high_scaler": 0}, "dcw_high_scaler", 0.0),
        ({"dcw_wavelet": "db4"}, "dcw_wavelet", "db4"),
        ({"retake_seed": [1, 2]}, "retake_seed", "1,2"),
        ({"retake_variance": "0.3"}, "retake_variance", 0.3),
        ({"latentShift": "0.1"}, "latent_shift", 0.1),
        ({"latentRescale": "1.1"}, "latent_rescale", 1.1),
        ({"fade_in_duration": "2"}, "fade_in_duration", 2.0),
        ({"fade_out_duration": 3}, "fade_out_duration", 3.0),
        ({"coverNoiseStrength": "0.4"}, "cover_noise_strength", 0.4),
        ({"repaint_mode": "conservative"}, "repaint_mode", "conservative"),
        ({"repaint_strength": "0.7"}, "repaint_strength", 0.7),
        ({"repaint_latent_crossfade_frames": "12"}, "repaint_latent_crossfade_frames", 12),
        ({"repaint_wav_crossfade_sec": "0.5"}, "repaint_wav_crossfade_sec", 0.5),
        ({"chunk_mask_mode": "explicit"}, "chunk_mask_mode", "explicit"),
        ({"flow_edit_source_caption": "old"}, "flow_edit_source_caption", "old"),
        ({"flow_edit_n_avg": "3"}, "flow_edit_n_avg", 3),
        ({"global_caption": "the song"}, "global_caption", "the song"),
        ({"custom_timesteps": "1,0.5,0"}, "timesteps", [1.0, 0.5, 0.0]),
        ({"coverStrength": "0.25"}, "audio_cover_strength", 0.25),
        ({"trackName": "drums"}, "track_name", "drums"),
        ({"instruments": "bass,drums"}, "track_classes", "bass,drums"),
    ],
)
def test_rest_reads_each_field_under_upstreams_names(body: dict, field: str, expected: Any) -> None:
    params = parse_release_params(body)
    assert params.fields == {field: expected}
    assert params.ignored == []


def test_a_rest_body_builds_the_request_with_every_new_field() -> None:
    body = {
        "task_type": "repaint",
        "src_audio_path": "/in/song.wav",
        "sampler_mode": "heun",
        "infer_method": "sde",
        "param_obj": '{"retake_variance": 0.2, "retake_seed": "5"}',
        "metas": {"repaint_mode": "balanced", "repaint_strength": 0.3, "dcw_enabled": True},
    }
    request = parse_release_params(body).to_request()
    assert (request.sampler_mode, request.infer_method, request.dcw_enabled) == ("heun", "sde", True)
    assert (request.retake_seed, request.retake_variance, request.repaint_strength) == ("5", 0.2, 0.3)
    assert request.field_notes == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sampler_mode": "rk4"}, "sampler_mode"),
        ({"dcw_wavelet": "morl"}, "dcw_wavelet"),
        ({"velocity_ema_factor": "lots"}, "velocity_ema_factor"),
        ({"guidance_params": "{broken"}, "guidance_params"),
        ({"guidance_params": "[1, 2]"}, "guidance_params"),
        ({"retake_seed": True}, "retake_seed"),
        ({"flow_edit_morph": "maybe"}, "flow_edit_morph"),
        ({"flow_edit_n_avg": 1.5}, "flow_edit_n_avg"),
    ],
)
def test_rest_refuses_an_unreadable_value_naming_the_field(body: dict, field: str) -> None:
    with pytest.raises(ParamError) as exc:
        parse_release_params(body)
    assert exc.value.field == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"retake_variance": 2}, "retake_variance"),
        ({"fade_out_duration": 9999}, "fade_out_duration"),
        ({"repaintLatentCrossfadeFrames": 5}, None),  # no such upstream alias: ignored and said
        ({"cover_noise_strength": -1}, "cover_noise_strength"),
    ],
)
def test_rest_bounds_are_the_requests(body: dict, field: str | None) -> None:
    params = parse_release_params(body)
    if field is None:
        assert params.ignored == list(body)
        return
    with pytest.raises(ParamError) as exc:
        params.to_request()
    assert exc.value.field == field and field in str(exc.value)


def test_infer_method_and_use_adg_left_the_no_effect_group() -> None:
    assert {spec.name for spec in NO_EFFECT} == {"use_tiled_decode", "is_format_caption"}
    assert BY_NAME["inferMethod"].target == "infer_method"
    new = {spec.target for spec in GENERATION} & set(UPSTREAM_DEFAULTS)
    assert new == set(UPSTREAM_DEFAULTS)


# --- the CLI ---


def _parser() -> argparse.ArgumentParser:
    from acestep.cli import generate

    root = argparse.ArgumentParser(prog="acestep")
    generate._generate_parser(root.add_subparsers())
    return root._subparsers._group_actions[0].choices["generate"]  # type: ignore[union-attr]


def test_cli_flags_set_the_request_fields() -> None:
    from acestep.cli.generate import REQUEST_ARGS

    argv = (
        "--sampler heun --infer-method sde --velocity-norm-threshold 2 --velocity-ema 0.1 --adg "
        "--no-dcw --dcw-mode low --dcw-scaler 0.1 --dcw-high-scaler 0.03 --dcw-wavelet db4 "
        "--retake-seed 1,2 --retake-variance 0.4 --latent-shift 0.1 --latent-rescale 1.2 --fade-in 1 "
        "--fade-out 2 --cover-noise-strength 0.3 --repaint-mode conservative --repaint-strength 0.6 "
        "--repaint-crossfade-frames 20 --repaint-wav-crossfade 0.5 --chunk-mask-mode explicit --flow-edit "
        "--flow-edit-source-caption old --flow-edit-source-lyrics la --flow-edit-n-min 0.1 "
        "--flow-edit-n-max 0.9 --flow-edit-n-avg 2 --global-caption whole --src-audio s.wav"
    ).split()
    args = _parser().parse_args([*argv, "--guidance-params", '{"angle_clip": 0.5}'])
    fields = {name: getattr(args, name) for name in REQUEST_ARGS if getattr(args, name) is not None}
    request = GenerationRequest(**fields)
    assert (request.sampler_mode, request.infer_method, request.guidance) == ("heun", "sde", "adg")
    assert request.guidance_params == {"angle_clip": 0.5}
    assert (request.dcw_enabled, request.dcw_mode, request.dcw_wavelet) == (False, "low", "db4")
    assert (request.retake_seed, request.retake_variance) == ("1,2", 0.4)
    assert (request.latent_shift, request.latent_rescale, request.fade_out_duration) == (0.1, 1.2, 2.0)
    assert (request.repaint_mode, request.repaint_latent_crossfade_frames, request.chunk_mask_mode) == (
        "conservative",
        20,
        "explicit",
    )
    assert (request.flow_edit_morph, request.flow_edit_n_avg, request.global_caption) == (True, 2, "whole")
    assert _parser().parse_args(["--dcw"]).dcw_enabled is True
    unset = _parser().parse_args([])
    assert unset.dcw_enabled is None and unset.flow_edit_morph is None and unset.sampler_mode is None


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--sampler", "rk4"], "--sampler"),
        (["--dcw-mode", "mid"], "--dcw-mode"),
        (["--repaint-mode", "x"], "--repaint-mode"),
    ],
)
def test_cli_choice_flags_refuse_other_values(args: list[str], flag: str, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--checkpoint", str(tmp_path / "nope"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "invalid choice" in err, err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--retake-variance", "2"], "retake_variance"),
        (["--flow-edit-n-min", "0.9", "--flow-edit-n-max", "0.1"], "flow_edit_n_min"),
        (["--guidance-variant", "cfg", "--guidance-params", '{"eta": 1}'], "guidance_params"),
    ],
)
def test_cli_refuses_bad_values_with_exit_2(args: list[str], needle: str, tmp_path, capsys) -> None:
    code = cli.main(["generate", "--checkpoint", str(tmp_path / "nope"), *args])
    assert code == 2
    assert needle in capsys.readouterr().err


# --- MCP and the UI ---


def test_the_mcp_tools_list_the_fields() -> None:
    from acestep.mcp.tools import build_server

    server = build_server(SimpleNamespace())  # listing the tools touches no backend
    tools = {tool.name: tool.inputSchema for tool in asyncio.run(server.list_tools())}
    song, lego = tools["generate_music"], tools["lego_stem"]
    assert "sampling" in song["properties"] and {"sampling", "edits"} <= set(lego["properties"])
    sampler = song["$defs"]["SamplerFields"]["properties"]
    assert set(sampler) >= {
        "sampler_mode",
        "dcw_enabled",
        "retake_seed",
        "fade_out_duration",
        "guidance_params",
    }
    assert sampler["sampler_mode"]["enum"] == ["euler", "heun"]
    assert sampler["retake_variance"]["maximum"] == 1.0
    edits = lego["$defs"]["EditFields"]["properties"]
    assert {"repaint_mode", "global_caption", "flow_edit_n_avg"} <= set(edits)
    assert edits["repaint_mode"]["enum"] == ["conservative", "balanced", "aggressive"]


def test_an_mcp_call_with_a_bad_option_is_refused_before_any_job() -> None:
    from mcp.server.fastmcp.exceptions import ToolError

    from acestep.mcp.tools import build_server

    server = build_server(SimpleNamespace())  # a call that reached the backend would fail differently
    with pytest.raises(ToolError, match="sampler_mode"):
        asyncio.run(server.call_tool("generate_music", {"caption": "x", "sampling": {"sampler_mode": "rk4"}}))


def test_the_ui_wires_every_control_into_the_request() -> None:
    from acestep.ui import sampling
    from acestep.ui.app import build_ui

    state = SimpleNamespace(
        model_name="m",
        variant=SimpleNamespace(name="turbo", default_steps=8, supported_tasks=frozenset({"text2music"})),
        config=SimpleNamespace(env={}, enable_training=False),
        lm_name=None,
        lm_missing="no LM here",
        loras=SimpleNamespace(catalog=lambda: {"loras": []}),
    )
    blocks = build_ui(state)
    fns = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
    inputs = {fn.api_name: [getattr(c, "elem_id", None) for c in fn.inputs] for fn in fns}
    expected = [f"gen-{name.replace('_', '-')}" for name in sampling.UI_FIELDS]
    start = inputs["generate"].index("gen-lora-scale") + 1  # the LoRA inputs, then these (the studio's last)
    assert inputs["generate"][start : start + len(expected)] == expected
    assert inputs["lego"][-1] == "lego-global-caption"
    defaults = [GenerationRequest.model_fields[name].default for name in sampling.UI_FIELDS]
    defaults[sampling.UI_FIELDS.index("dcw_enabled")] = "auto"
    assert sampling.request_values(defaults) == {}  # untouched controls send nothing
    moved = dict(zip(sampling.UI_FIELDS, defaults, strict=True)) | {
        "sampler_mode": "heun",
        "dcw_enabled": "off",
        "retake_seed": "4",
        "guidance_params": '{"eta": 0.5}',
        "repaint_latent_crossfade_frames": 20.0,
    }
    assert sampling.request_values(list(moved.values())) == {
        "sampler_mode": "heun",
        "dcw_enabled": False,
        "retake_seed": "4",
        "guidance_params": {"eta": 0.5},
        "repaint_latent_crossfade_frames": 20.0,
    }


def test_a_flow_edit_needs_its_source_not_codes_and_a_bounded_cost() -> None:
    edit = dict(task_type="text2music", flow_edit_morph=True, **SOURCE)
    with pytest.raises(ValueError, match="audio_code_string"):
        GenerationRequest(**edit, audio_code_string="<|audio_code_1|>")
    with pytest.raises(ValueError, match="over 200"):
        GenerationRequest(**edit, inference_steps=50, flow_edit_n_avg=5)
    GenerationRequest(**edit, inference_steps=50, flow_edit_n_avg=4)  # 200 passes: the bound itself
    with pytest.raises(ValueError, match="above 0"):
        GenerationRequest(timesteps=[0.0, 0.0])


def test_flow_edit_notes_say_what_it_does_not_use() -> None:
    request = GenerationRequest(
        task_type="text2music", flow_edit_morph=True, retake_seed=3, retake_variance=0.0,
        cover_noise_strength=0.2, **SOURCE,
    )  # fmt: skip
    notes = request.field_notes
    assert not any("retake_seed" in note for note in notes)  # the edit draws its noise from it
    assert notes == [
        "retake_variance, cover_noise_strength: no effect with flow_edit_morph (it starts from the source)"
    ]


def test_fields_the_model_leaves_idle_are_noted() -> None:
    from acestep.checkpoints.variants import detect_variant
    from acestep.engine.sampling import SamplerSettings

    turbo, base = detect_variant({"is_turbo": True}), detect_variant({"model_version": "base"})
    request = GenerationRequest(guidance_scale=5.0, guidance_variant="cfg", dcw_mode="low")
    _, turbo_notes = SamplerSettings.resolve(request, turbo)
    _, base_notes = SamplerSettings.resolve(request, base)
    assert turbo_notes == [
        "guidance_scale, guidance_variant: no effect on turbo models (they sample without guidance)"
    ]
    assert base_notes == ["dcw_mode: no effect; DCW is off for base models unless dcw_enabled is true"]
    _, unguided = SamplerSettings.resolve(GenerationRequest(guidance_scale=1.0, use_adg=True), base)
    assert unguided == ["use_adg: no effect while guidance_scale is 1 or less"]
