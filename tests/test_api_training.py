"""The training and dataset routes against a real server on the tiny base checkpoint (CPU): gated by
ACESTEP_TRAINING, behind the key; a dataset scanned, edited, saved and preprocessed (the cache
reused the second time); a LoRA trained, listed and used by a lego job; one run at a time; a stop
keeps a checkpoint; bad inputs are refused with the reason."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _mcp import http_session
from _server import Server

from acestep.testing import synthetic_audio

# A run that takes about a second on the CPU (the tiny checkpoint, two 3 s tracks).
TINY = {
    "lora_rank": 4,
    "lora_alpha": 8,
    "train_epochs": 2,
    "gradient_accumulation": 1,
    "crop_seconds": 2,
    "warmup_steps": 0,
    "save_every_n_epochs": 0,
}


def write_songs(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        sf.write(folder / f"song{i}.wav", synthetic_audio(3.0, seed=seed + i), 48000)
        (folder / f"song{i}.txt").write_text(f"verse {i}\nla la la")
    return folder


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training_api")
    training = root / "training"
    write_songs(training / "songs")
    write_songs(training / "album", seed=10)  # its own audio: a cold cache whatever ran first
    (training / "empty").mkdir()
    write_songs(root / "outside")
    return {"training": training, "loras": root / "loras", "outside": root / "outside"}


@pytest.fixture(scope="module")
def server(upstream_base, places, tmp_path_factory):
    srv = Server(
        upstream_base,
        tmp_path_factory.mktemp("training_server"),
        ACESTEP_TRAINING="on",
        ACESTEP_TRAINING_DIR=str(places["training"]),
        ACESTEP_LORA_DIR=str(places["loras"]),
    )
    yield srv
    srv.stop()


def put(server: Server, path: str, body: dict):
    return server.client.put(path, headers=server.auth, json=body)


def data(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()["data"]


def wait_run(server: Server, task_id: str, until=None, timeout: float = 300) -> dict:
    """Poll the status until the run ends (or ``until(status)`` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        status = data(server.get("/v1/training/status", params={"task_id": task_id}))
        if (until or (lambda s: not s["is_training"]))(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


@pytest.fixture(scope="module")
def trained(server) -> dict:
    """One finished LoRA run on ``songs`` (the status at its end)."""
    body = {"tensor_dir": "songs", "lora_output_dir": "./out/tiny", "use_fp8": True} | TINY
    answer = data(server.post("/v1/training/start", json=body))
    assert answer["output_name"] == "tiny" and answer["samples"] == 2 and answer["config"]["lora_rank"] == 4
    assert answer["fp8_enabled"] is False and "use_fp8" in answer["warnings"][0]
    return wait_run(server, answer["task_id"])


def test_the_routes_exist_only_with_training_on(upstream_base, tmp_path):
    off = Server(upstream_base, tmp_path)
    try:
        for method, path in (("GET", "/v1/training/status"), ("POST", "/v1/training/start"),
                             ("POST", "/v1/dataset/scan"), ("GET", "/v1/dataset/samples")):  # fmt: skip
            # No body: a 404 leaves a body unread, and the server then drops the connection.
            response = off.client.request(method, path, headers=off.auth)
            assert response.status_code == 404, (path, response.text)

        async def tools() -> set[str]:
            async with http_session(off) as session:
                return {tool.name for tool in (await session.list_tools()).tools}

        names = asyncio.run(asyncio.wait_for(tools(), 120))
        assert "list_loras" in names and "start_training" not in names
    finally:
        off.stop()


def test_the_routes_need_the_key(server):
    assert server.client.get("/v1/training/status").status_code == 401
    assert server.client.post("/v1/dataset/scan", json={"audio_dir": "songs"}).status_code == 401
    wrong = {"Authorization": "Bearer wrong-key-wrong-key"}
    assert server.client.post("/v1/training/stop", headers=wrong).status_code == 401
    status = data(server.get("/v1/training/status"))
    assert {"is_training", "status", "current_epoch", "loss_history", "config"} <= set(status)


def test_a_dataset_is_scanned_edited_saved_and_preprocessed_once(server, places):
    scanned = data(server.post("/v1/dataset/scan", json={"audio_dir": "album", "dataset_name": "mine"}))
    assert scanned["num_samples"] == 2 and scanned["dataset_name"] == "mine" and scanned["problems"] == {}
    assert [s["index"] for s in scanned["samples"]] == [0, 1]
    assert (
        scanned["samples"][0]["lyrics"].startswith("verse 0") and not scanned["samples"][0]["is_instrumental"]
    )

    edited = data(
        put(server, "/v1/dataset/sample/1", {"caption": "warm synth pop", "bpm": 120, "keyscale": "C major"})
    )
    assert edited["sample"]["caption"] == "warm synth pop" and edited["sample"]["bpm"] == 120
    sample = data(server.get("/v1/dataset/sample/1"))
    assert (sample["caption"], sample["keyscale"], sample["labeled"]) == ("warm synth pop", "C major", True)
    bad = put(server, "/v1/dataset/sample/1", {"bpm": "fast"})
    assert bad.status_code == 400 and "bpm" in bad.json()["detail"]
    assert data(server.get("/v1/dataset/sample/1"))["bpm"] == 120  # unchanged by the refused edit
    assert server.get("/v1/dataset/sample/7").status_code == 404
    assert data(server.get("/v1/dataset/samples"))["labeled_count"] == 1

    saved = data(server.post("/v1/dataset/save", json={"save_path": "sets/mine", "custom_tag": "zq"}))
    assert saved["save_path"] == str(places["training"] / "sets" / "mine" / "dataset.json")
    written = (places["training"] / "sets" / "mine" / "dataset.json").read_text()
    assert "warm synth pop" in written and '"custom_tag": "zq"' in written

    first = data(server.post("/v1/dataset/preprocess", json={"output_dir": "tensors/mine"}))
    assert first["status"] == "completed" and first["total"] == 2
    assert (
        first["computed"]["vae"] == 2 and (places["training"] / "tensors" / "mine" / "dataset.json").is_file()
    )
    again = server.post(
        "/v1/dataset/preprocess_async", json={"output_dir": "tensors/mine", "skip_existing": True}
    )
    task_id = data(again)["task_id"]
    deadline = time.monotonic() + 120
    while (status := data(server.get(f"/v1/dataset/preprocess_status/{task_id}")))["status"] not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["reused"]["vae"] == 2 and status["computed"]["vae"] == 0, status
    assert data(server.get("/v1/dataset/preprocess_status"))["task_id"] == task_id
    assert server.get("/v1/dataset/preprocess_status/nope").status_code == 404


def test_a_trained_lora_is_listed_and_used_by_a_lego_job(server, trained):
    assert trained["state"] == "succeeded" and trained["status"] == "Completed", trained
    assert trained["loss_history"] and {"step", "loss"} == set(trained["loss_history"][0])
    assert trained["adapter"] == "tiny" and trained["current_step"] == trained["total_steps"] > 0
    listed = {entry["name"]: entry for entry in data(server.get("/v1/loras"))["loras"]}
    assert (
        {"tiny", "tiny-peft"} <= set(listed) and listed["tiny"]["compatible"] and listed["tiny"]["rank"] == 4
    )

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((48000 * 3, 2), dtype="float32"), 48000, format="WAV")
    task_id = server.release(
        data={"task_type": "lego", "track_name": "drums", "inference_steps": "2", "lora": "tiny"},
        files={"ctx_audio": ("song.wav", buffer.getvalue(), "audio/wav")},
    )
    entry = server.wait(task_id)
    assert entry["status"] == 1, entry
    assert entry["items"][0]["lora"] == [{"name": "tiny", "scale": 1.0}]


def test_export_names_the_adapter_and_copies_only_into_allowed_folders(server, trained, places):
    found = data(server.post("/v1/training/export", json={"lora_output_dir": "./out/tiny"}))
    assert {a["name"] for a in found["adapters"]} == {"tiny", "tiny-peft"} and found["export_path"] is None
    copied = data(
        server.post("/v1/training/export", json={"lora_output_dir": "tiny", "export_path": "exports/tiny"})
    )
    assert (places["training"] / "exports" / "tiny" / "adapter_model.safetensors").is_file(), copied
    again = server.post(
        "/v1/training/export", json={"lora_output_dir": "tiny", "export_path": "exports/tiny"}
    )
    assert again.status_code == 409
    outside = server.post(
        "/v1/training/export", json={"lora_output_dir": "tiny", "export_path": str(places["outside"] / "x")}
    )
    assert outside.status_code == 403 and "outside" in outside.json()["detail"]
    assert server.post("/v1/training/export", json={"output_name": "ghost"}).status_code == 404


def test_one_run_at_a_time_and_a_stop_keeps_a_checkpoint(server, trained):
    body = {"tensor_dir": "songs", "output_name": "long"} | TINY | {"train_epochs": 5000}
    started = data(server.post("/v1/training/start", json=body))
    try:
        clash = server.post("/v1/training/start_lokr", json={"tensor_dir": "songs", "output_dir": "other"})
        assert clash.status_code == 409 and "already" in clash.json()["detail"]
        running = wait_run(
            server, started["task_id"], until=lambda s: s["current_step"] >= 1 or not s["is_training"]
        )
        assert running["is_training"] and running["stage"] == "train", running
    finally:
        stop = data(server.post("/v1/training/stop", json={}))
    assert stop["outcome"] == "stopping", stop
    ended = wait_run(server, started["task_id"])
    assert ended["state"] == "succeeded" and ended["stopped"] and ended["status"] == "Stopped", ended
    assert ended["checkpoints"] and ended["adapter"] == "long"
    assert data(server.post("/v1/training/stop"))["outcome"] == "finished"


def test_bad_inputs_are_refused_with_the_reason(server, places):
    def refused(path: str, body: dict, status: int, words: str) -> None:
        response = server.post(path, json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["detail"], response.text

    start = "/v1/training/start"
    refused(start, {"tensor_dir": str(places["outside"])}, 403, "outside the training folder")
    refused(start, {"tensor_dir": "../outside"}, 403, "outside the training folder")
    refused(start, {"tensor_dir": "nothing-here"}, 404, "not found")
    refused(start, {"tensor_dir": "empty"}, 400, "no audio files")
    refused(start, {"tensor_dir": "songs", "rank_of_lora": 4}, 400, "rank_of_lora")
    refused(start, {"tensor_dir": "songs", "lokr_linear_dim": 4}, 400, "not lora settings")
    refused(start, {"tensor_dir": "songs", "network_weights": "/x"}, 400, "resume")
    refused(start, {"tensor_dir": "songs", "lora_rank": 0}, 400, "lora_rank")
    refused(start, {}, 400, "tensor_dir is required")
    refused("/v1/dataset/scan", {"audio_dir": str(places["outside"])}, 403, "outside the training folder")
    refused("/v1/dataset/scan", {"audio_dir": "empty"}, 400, "no audio files")
    refused("/v1/dataset/scan", {"audio_dir": "songs", "tag_position": "middle"}, 400, "tag_position")
    refused("/v1/dataset/save", {"save_path": "/etc/acestep.json"}, 403, "outside the training folder")
    refused("/v1/dataset/preprocess", {"output_dir": "t", "colour": "red"}, 400, "colour")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")
def test_the_api_process_never_loads_torch(server, trained):
    """Scans, edits, saves and runs are handled without torch: the GPU worker trains."""
    data(server.post("/v1/dataset/scan", json={"audio_dir": "songs"}))
    data(server.post("/v1/dataset/save", json={"save_path": "sets/plain.json"}))
    data(server.get("/v1/training/status"))
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "libc10" not in maps
