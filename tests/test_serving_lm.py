"""The LM over REST, on a real uvicorn: thinking jobs, /format_input, and refusals without an LM."""

from __future__ import annotations

import json

import pytest

from tests._server import Server

LM_ENV = {"ACESTEP_INIT_LLM": "true"}  # the cpu tier leaves the LM off by default


@pytest.fixture(scope="module")
def lm_server(lm_checkpoint, tmp_path_factory):
    server = Server(lm_checkpoint, tmp_path_factory.mktemp("lm_api"), **LM_ENV)
    yield server
    server.stop()


def test_health_names_the_lm(lm_server):
    data = lm_server.get("/health").json()["data"]
    assert data["llm_initialized"] is True and data["loaded_lm_model"] == "acestep-5Hz-lm-1.7B"


def test_a_thinking_job_reports_the_lm_and_its_metadata(lm_server):
    body = {"prompt": "a tiny song", "thinking": True, "use_cot_caption": False, "audio_duration": 6,
            "batch_size": 1, "inference_steps": 2, "seed": 4, "audio_format": "wav"}  # fmt: skip
    entry = lm_server.wait(lm_server.release(json=body))
    assert entry["status"] == 1, entry
    item = json.loads(entry["result"])[0]
    assert item["lm_model"] == "acestep-5Hz-lm-1.7B"
    assert 30 <= int(item["metas"]["bpm"]) <= 300  # written by the LM
    assert item["prompt"] == "a tiny song"  # use_cot_caption off: the user's caption stands


def test_format_input_fills_metadata_and_keeps_user_values(lm_server):
    body = {"prompt": "lofi beat", "lyrics": "", "temperature": 0.7, "param_obj": {"bpm": 92}}
    response = lm_server.post("/format_input", json=body)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    names = {"caption", "lyrics", "bpm", "key_scale", "time_signature", "duration", "vocal_language"}
    assert set(data) == names
    assert data["bpm"] == 92 and data["caption"]
    assert data["key_scale"] and data["time_signature"] in ("2", "3", "4", "6")


def test_format_input_refuses_bad_params(lm_server):
    response = lm_server.post("/format_input", json={"prompt": "x", "param_obj": {"bpm": 900}})
    assert response.status_code == 400 and "bpm" in response.text
    response = lm_server.post("/format_input", json={"prompt": "x", "param_obj": "{not json"})
    assert response.status_code == 400 and "param_obj" in response.text


def test_without_an_lm_thinking_and_format_are_refused_clearly(upstream_base, tmp_path):
    server = Server(upstream_base, tmp_path, **LM_ENV)
    try:
        response = server.post("/release_task", json={"prompt": "x", "thinking": True})
        assert response.status_code == 400
        assert "thinking" in response.text and "acestep-download" in response.text
        response = server.post("/format_input", json={"prompt": "x"})
        assert response.status_code == 400 and "LLM not initialized" in response.text
        # The optional switches alone run nothing and are reported, not refused.
        body = {"prompt": "x", "use_cot_caption": True, "inference_steps": 1, "audio_duration": 2}
        response = server.post("/release_task", json=body)
        assert response.status_code == 200
        assert "use_cot_caption" in " ".join(response.json()["data"]["warnings"])
    finally:
        server.stop()
