"""The MCP tool ``edit_audio`` through the SDK's own client, on a real ``acestep-api`` serving a
tiny base checkpoint (flow edit needs a base or SFT model): repaint, cover-nofsq and a flow edit of
an uploaded WAV come back as audio of the source's length, and the refusals name the choices or
the field and leave no staged upload behind."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf
from _mcp import http_session
from _server import Server

from acestep.testing import synthetic_audio

RATE = 48000
SECONDS = 2.4
SOURCE_SAMPLES = int(round(SECONDS * RATE))
FAST = {"inference_steps": 2, "batch_size": 1, "audio_format": "wav", "seed": 7}
WINDOW = (1.0, 1.8)  # the repainted seconds; the splice ramps are 0.05 s wide
CHOICES = "cover, cover-nofsq, repaint, or text2music with edits.flow_edit_morph true"


def source() -> np.ndarray:
    return synthetic_audio(SECONDS, seed=3)


def wav_base64(samples: np.ndarray) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, samples, RATE, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    srv = Server(upstream_base, tmp_path_factory.mktemp("mcp_edit"))
    yield srv
    srv.stop()


def edit(server: Server, arguments: dict):
    async def run():
        async with http_session(server) as session:
            return await session.call_tool("edit_audio", arguments)

    return asyncio.run(asyncio.wait_for(run(), 600))


def edited(server: Server, arguments: dict) -> tuple[dict, np.ndarray]:
    """The call's summary and its one file's samples [samples, 2]."""
    result = edit(server, {"audio_base64": wav_base64(source())} | FAST | arguments)
    assert not result.isError, result.content
    summary = json.loads(result.content[0].text)
    (blob,) = [part.resource.blob for part in result.content[1:] if part.type == "resource"]
    samples, rate = sf.read(io.BytesIO(base64.b64decode(blob)), dtype="float32")
    assert rate == RATE and summary["seeds"] == [FAST["seed"]]
    return summary, samples


def staged(server: Server) -> set[str]:
    uploads = server.workdir / "tmp" / "uploads"
    return {path.name for path in uploads.iterdir()} if uploads.exists() else set()


def test_the_tool_is_listed_with_its_fields(server):
    async def run():
        async with http_session(server) as session:
            return {tool.name: tool for tool in (await session.list_tools()).tools}

    tools = asyncio.run(asyncio.wait_for(run(), 60))
    schema = tools["edit_audio"].inputSchema
    fields = ("task_type", "audio_base64", "repainting_start", "audio_cover_strength", "sampling", "edits")
    assert set(fields) <= set(schema["properties"])
    assert "docs/generation.md" in tools["edit_audio"].description


def test_a_conservative_repaint_keeps_the_source_outside_the_window(server):
    window = {"task_type": "repaint", "repainting_start": WINDOW[0], "repainting_end": WINDOW[1]}
    summary, kept = edited(server, window | {"edits": {"repaint_mode": "conservative"}})
    assert kept.shape == (SOURCE_SAMPLES, 2)
    assert not any("repaint_mode" in w for w in summary["warnings"]), summary["warnings"]
    before = slice(0, int((WINDOW[0] - 0.1) * RATE))  # left of the window and its ramp
    after = slice(int((WINDOW[1] + 0.1) * RATE), SOURCE_SAMPLES)
    window_samples = slice(int(WINDOW[0] * RATE), int(WINDOW[1] * RATE))
    # The output is peak-normalised (enable_normalization, a request default): one gain for all.
    outside = np.concatenate([source()[before], source()[after]])
    gain = float(np.sum(np.concatenate([kept[before], kept[after]]) * outside) / np.sum(outside**2))
    assert gain > 0.1
    np.testing.assert_allclose(kept[before], gain * source()[before], atol=1e-4)
    np.testing.assert_allclose(kept[after], gain * source()[after], atol=1e-4)
    assert not np.allclose(kept[window_samples], gain * source()[window_samples], atol=1e-2)

    # aggressive splices nothing back: the repaint_mode reached the engine.
    _, regenerated = edited(server, window | {"edits": {"repaint_mode": "aggressive"}})
    assert regenerated.shape == (SOURCE_SAMPLES, 2)
    assert not np.allclose(regenerated[before], gain * source()[before], atol=1e-2)


def test_cover_nofsq_runs_with_the_cover_fields(server):
    arguments = {
        "task_type": "cover-nofsq",
        "caption": "a bright synth arpeggio",
        "audio_cover_strength": 0.5,
        "edits": {"cover_noise_strength": 0.3, "chunk_mask_mode": "explicit"},
        "sampling": {"retake_seed": 2, "retake_variance": 0.3},
    }
    summary, covered = edited(server, arguments)
    assert covered.shape == (SOURCE_SAMPLES, 2)
    assert np.isfinite(covered).all() and np.abs(covered).max() > 0
    noted = " ".join(summary["warnings"])
    for field in ("cover_noise_strength", "chunk_mask_mode", "retake", "audio_cover_strength"):
        assert field not in noted, summary["warnings"]  # each one acts on a cover


def test_a_flow_edit_of_text2music_changes_the_source(server):
    arguments = {
        "task_type": "text2music",
        "caption": "a loud brass band",
        "edits": {
            "flow_edit_morph": True,
            "flow_edit_source_caption": "a calm piano chord with a beat",
            "flow_edit_n_min": 0.0,
            "flow_edit_n_max": 0.9,
        },
    }
    summary, morphed = edited(server, arguments)
    assert morphed.shape == (SOURCE_SAMPLES, 2)
    assert "lm_model" not in summary  # the LM does not run for a flow edit
    assert not any("flow_edit" in w for w in summary["warnings"]), summary["warnings"]


@pytest.mark.parametrize(("task_type", "edits"), [("lego", None), ("text2music", None), ("extract", None)])
def test_other_tasks_are_refused_naming_the_choices(server, task_type, edits):
    before = staged(server)
    arguments = {"task_type": task_type, "audio_base64": wav_base64(source())} | FAST
    result = edit(server, arguments | ({"edits": edits} if edits else {}))
    assert result.isError
    message = result.content[0].text
    assert CHOICES in message and repr(task_type) in message, message
    assert staged(server) == before


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        ({"task_type": "cover", "audio_cover_strength": 1.5}, "audio_cover_strength"),
        ({"task_type": "repaint", "repainting_start": 2.0, "repainting_end": 1.0}, "repainting_start"),
        ({"task_type": "cover", "audio_format": "wma"}, "audio_format"),
        ({"task_type": "cover", "audio_base64": wav_base64(synthetic_audio(0.5))}, "at least 1 s"),
        ({"task_type": "cover", "edits": {"repaint_mode": "gentle"}}, "repaint_mode"),
    ],
)
def test_a_bad_value_is_refused_naming_it_and_the_upload_is_removed(server, arguments, said):
    before = staged(server)
    result = edit(server, {"audio_base64": wav_base64(source())} | FAST | arguments)
    assert result.isError
    assert said in result.content[0].text, result.content[0].text
    assert staged(server) == before
