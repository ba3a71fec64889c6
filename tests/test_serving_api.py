"""The REST API against a real uvicorn on 127.0.0.1 with a tiny checkpoint: upstream client flows,
/lego, /unload, memory, cancellation and queue limits."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf
from _server import Server

from acestep.testing import synthetic_audio


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    srv = Server(upstream_base, tmp_path_factory.mktemp("api"), ACESTEP_MAX_UPLOAD_MB="3")
    yield srv
    srv.stop()


def wav_bytes(seconds: float, seed: int = 1, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_audio(seconds, seed=seed), 48000, format="WAV", subtype=subtype)
    return buffer.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(data), dtype="float32")


def test_text2music_upstream_flow_and_reported_seeds_reproduce(server):
    body = {"prompt": "calm piano", "audio_duration": 6, "seed": 42, "batch_size": 1,
            "inference_steps": 4, "audio_format": "wav"}  # fmt: skip
    response = server.post("/release_task", json=body)
    data = response.json()
    assert response.status_code == 200 and data["code"] == 200 and data["error"] is None
    assert data["data"]["status"] == "queued" and data["data"]["queue_position"] in (0, 1)
    entry = server.wait(data["data"]["task_id"])
    assert entry["status"] == 1 and entry["error"] is None
    item = entry["items"][0]
    assert item["status"] == 1 and item["seed_value"] == "42" and item["dit_model"] == "acestep-v15-base"
    assert item["lm_model"] is None and item["file"].startswith("/v1/audio?path=")
    audio, rate = decode(server.download(item["file"]))
    assert rate == 48000 and audio.shape == (6 * 48000, 2)

    # A random seed is reported, and resubmitting that seed gives the same audio.
    first = server.wait(server.release(json=body | {"seed": -1}))["items"][0]
    again = server.wait(server.release(json=body | {"seed": int(first["seed_value"])}))["items"][0]
    first_audio, again_audio = (decode(server.download(i["file"]))[0] for i in (first, again))
    assert np.array_equal(first_audio, again_audio)


def test_lego_by_multipart_release_task_keeps_the_source_length(server):
    fields = {"task_type": "lego", "track_name": "vocals", "prompt": "warm voice", "seed": "3",
              "batch_size": "1", "inference_steps": "4", "audio_format": "flac"}  # fmt: skip
    task = server.release(data=fields, files={"ctx_audio": ("song.wav", wav_bytes(7.0), "audio/wav")})
    entry = server.wait(task)
    assert entry["status"] == 1, entry
    audio, _ = decode(server.download(entry["items"][0]["file"]))
    assert audio.shape[0] == 7 * 48000
    assert not list((server.workdir / "tmp" / "uploads").iterdir())  # the upload was deleted


def test_lego_route_streams_a_stem_as_long_as_the_source(server):
    source = wav_bytes(6.5, seed=4)
    response = server.post(
        "/lego",
        data={"track_type": "drums", "bpm": "120", "seed": "9", "format": "wav"},
        files={"audio_file": ("beat.wav", source, "audio/wav")},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav" and response.headers["x-seed"] == "9"
    audio, rate = decode(response.content)
    assert rate == 48000 and audio.shape[0] == int(6.5 * 48000)
    as_json = server.post(
        "/lego",
        data={"track_type": "backing_vocals", "bpm": "96", "response": "json", "batch_size": "2"},
        files={"audio_file": ("beat.wav", source, "audio/wav")},
    )
    assert as_json.status_code == 200, as_json.text
    assert len(as_json.json()["data"]["urls"]) == 2


def test_unload_then_a_new_job_reloads(server):
    server.wait(server.release(json={"prompt": "x", "audio_duration": 6, "batch_size": 1}))
    park = server.post("/unload", json={"level": "park"}).json()["data"]
    assert park["action"] == "park" and set(park["residency"].values()) <= {"cpu", "unloaded"}
    free = server.post("/unload", json={"level": "free"}).json()["data"]
    assert free["action"] == "free" and "exited with code 0" in free["note"]
    memory = server.get("/v1/memory").json()["data"]
    assert memory["worker"]["state"] == "unloaded" and memory["worker"]["pid"] is None
    assert server.get("/health").json()["data"]["models_initialized"] is False
    entry = server.wait(server.release(json={"prompt": "y", "audio_duration": 6, "batch_size": 1}))
    assert entry["status"] == 1
    memory = server.get("/v1/memory").json()["data"]
    assert memory["worker"]["state"] == "ready" and memory["last_reports"][-1]["action"] == "load"
    load = server.post("/v1/load").json()["data"]
    assert load["action"] == "none"  # already loaded: nothing to do, and it says so
    assert server.post("/unload", json={"level": "nap"}).status_code == 400


def test_cancel_and_unknown_ids(server):
    slow = {"prompt": "long", "audio_duration": 30, "inference_steps": 200, "batch_size": 1}
    running = server.release(json=slow)
    queued = server.release(json=slow | {"seed": 5})
    # Progress is per task: the running one reports its own stage and fraction, the other its place.
    deadline = time.monotonic() + 120
    while (entry := server.query(running))["stage"] != "diffusion":
        assert time.monotonic() < deadline and entry["status"] == 0, entry
        time.sleep(0.05)
    assert 0.0 <= entry["progress"] < 1.0 and entry["progress_text"].startswith("diffusion")
    waiting = server.query(queued)
    assert waiting["stage"] == "queued" and waiting["progress_text"] == "queued (position 1)"
    cancelled = server.post("/v1/cancel", json={"task_id": queued}).json()["data"]
    assert cancelled["outcome"] == "cancelled"
    entry = server.wait(queued)
    assert entry["status"] == 2 and entry["error"] == "cancelled by request"
    assert server.post("/v1/cancel", json={"task_id": running}).json()["data"]["outcome"] == "cancelling"
    entry = server.wait(running)
    assert entry["status"] == 2 and "cancelled" in entry["error"]
    unknown = server.query("no-such-task")
    assert unknown["status"] == 2 and "unknown task_id" in unknown["error"]
    assert server.post("/v1/cancel", json={"task_id": "nope"}).status_code == 404
    # The server goes on.
    after = server.release(json={"prompt": "z", "audio_duration": 6, "batch_size": 1})
    assert server.wait(after)["status"] == 1


def test_health_models_stats(server):
    health = server.client.get("/health")  # open without a key
    assert health.status_code == 200 and health.json()["data"]["service"] == "ACE-Step API"
    models = server.get("/v1/models").json()["data"]
    assert models["default_model"] == "acestep-v15-base"
    assert "lego" in models["models"][0]["supported_task_types"]
    stats = server.get("/v1/stats").json()["data"]
    # (This module's other tests may or may not have run first: random order.)
    assert stats["queue_maxsize"] == 200 and {"total", "queued", "running", "succeeded"} <= set(stats["jobs"])
    assert server.post("/format_input", json={"prompt": "x"}).status_code == 400  # no LM folder here
    simple = server.post("/create_random_sample", json={}).json()["data"]
    assert set(simple) == {"description", "instrumental", "vocal_language"}  # upstream's default type
    full = server.post("/create_random_sample", json={"sample_type": "text2music"}).json()["data"]
    assert {"caption", "bpm", "duration", "keyscale"} <= set(full)
    # The docs hold no secret: open without the key (Swagger UI fetches the schema), the API is not.
    assert "/lego" in server.client.get("/openapi.json").json()["paths"]
    assert server.client.get("/v1/models").status_code == 401


def test_a_full_queue_answers_429_with_retry_after(upstream_base, tmp_path):
    srv = Server(upstream_base, tmp_path, ACESTEP_QUEUE_MAXSIZE="1")
    try:
        slow = {"prompt": "long", "audio_duration": 30, "inference_steps": 200, "batch_size": 1}
        first = srv.release(json=slow)
        deadline = time.monotonic() + 60
        while srv.query(first)["stage"] in ("queued",) and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.release(json=slow)  # waits in the queue (size 1)
        full = srv.post("/release_task", json=slow)
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert "queue is full" in full.json()["detail"]
    finally:
        srv.stop()
