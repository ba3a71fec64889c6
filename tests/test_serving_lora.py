"""LoRA over the REST API against a real server (GPU worker in its own process): the catalog,
per-request adapters, upstream's sticky load/unload, determinism, and bad adapters as clear 4xx."""

from __future__ import annotations

import numpy as np
import pytest
from _server import Server

from acestep.testing import make_tiny_lora

BODY = {"prompt": "tight drums", "audio_duration": 3, "seed": 11, "batch_size": 1,
        "inference_steps": 4, "audio_format": "wav32"}  # fmt: skip


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server_loras")
    make_tiny_lora(folder / "drums", layout="diffusers", variant="base", rank=4, seed=1)
    make_tiny_lora(folder / "voice", layout="peft", variant="base", rank=2, seed=2)
    make_tiny_lora(folder / "fast", layout="diffusers", variant="turbo", rank=2, seed=3)
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    (folder / "old.pt").write_bytes(b"\x80\x04pickle")
    return folder


@pytest.fixture(scope="module")
def shared_server(upstream_base, lora_folder, tmp_path_factory):
    srv = Server(upstream_base, tmp_path_factory.mktemp("lora_api"), ACESTEP_LORA_DIR=str(lora_folder))
    yield srv
    srv.stop()


@pytest.fixture
def server(shared_server):
    """The module's server with no adapter loaded and no default, whatever ran before (any order)."""
    response = shared_server.post("/v1/lora/unload", json={})
    assert response.status_code == 200, response.text
    return shared_server


def run(server: Server, **fields) -> tuple[np.ndarray, dict]:
    return server.generate(BODY | fields)


def test_the_catalog_lists_both_formats_with_their_metadata(server, lora_folder):
    response = server.get("/v1/loras")
    assert response.status_code == 200
    data = response.json()["data"]
    found = {entry["name"]: entry for entry in data["loras"]}
    assert sorted(found) == ["drums", "fast", "voice"] and data["model_variant"] == "base"
    assert (found["drums"]["format"], found["drums"]["base_variant"], found["drums"]["rank"]) == (
        "diffusers", "base", 4
    )  # fmt: skip
    voice = found["voice"]
    assert (voice["format"], voice["rank"], voice["compatible"]) == ("peft", 2, True)
    assert found["fast"]["compatible"] is False
    assert "not a readable safetensors" in data["problems"]["broken.safetensors"]
    assert "pickles" in data["problems"]["old.pt"]
    assert data["directory"] == str(lora_folder) and data["resident"]["loaded"] == []


def test_per_request_adapters_switch_and_leave_the_base_exact(server):
    base, item = run(server)
    assert item["lora"] == []
    drums, item = run(server, lora="drums")
    assert item["lora"] == [{"name": "drums", "scale": 1.0}] and not np.array_equal(drums, base)
    both, item = run(server, lora=["drums", "voice"], lora_scale=[0.5, 1.0])
    assert item["lora"] == [{"name": "drums", "scale": 0.5}, {"name": "voice", "scale": 1.0}]
    assert not np.array_equal(both, drums)
    assert np.array_equal(run(server)[0], base)  # after switching: the base, bit for bit
    assert np.array_equal(run(server, lora="drums", lora_scale=0)[0], base)
    assert np.array_equal(run(server, loras="drums")[0], drums)  # reproduces (an alias, too)
    memory = server.get("/v1/memory").json()["data"]
    assert {a["name"] for a in memory["adapters"]["loaded"]} == {"drums", "voice"}
    assert memory["residency"]["lora"] == "cpu" and memory["adapters"]["bytes"] > 0
    unloaded = server.post("/v1/lora/unload", json={})
    assert unloaded.status_code == 200, unloaded.text
    report = unloaded.json()["data"]
    assert report["action"] == "lora_unload" and report["residency"]["lora"] == "unloaded"
    assert report["adapters"]["loaded"] == [] and "drums" in report["note"]
    assert np.array_equal(run(server)[0], base)  # after load + unload


def test_load_makes_a_sticky_default_that_requests_can_refuse(server):
    base, _ = run(server)
    drums, _ = run(server, lora="drums")
    loaded = server.post("/v1/lora/load", json={"name": "drums", "scale": 1.0})
    assert loaded.status_code == 200, loaded.text
    data = loaded.json()["data"]
    assert data["action"] == "lora_load" and data["default"]["adapters"] == [{"name": "drums", "scale": 1.0}]
    assert [a["name"] for a in data["adapters"]["loaded"]] == ["drums"]
    sticky, item = run(server)  # names no adapter: the default is applied and recorded
    assert item["lora"] == [{"name": "drums", "scale": 1.0}] and np.array_equal(sticky, drums)
    assert np.array_equal(run(server, lora="none")[0], base)
    status = server.get("/v1/lora/status").json()["data"]
    assert status["loaded"] and status["active"] and status["scales"] == {"drums": 1.0}
    assert server.post("/v1/lora/scale", json={"scale": 0}).status_code == 200
    assert np.array_equal(run(server)[0], base)
    assert server.post("/v1/lora/scale", json={"scale": 1, "adapter_name": "voice"}).status_code == 404
    assert server.post("/v1/lora/scale", json={"scale": 1}).status_code == 200
    assert server.post("/v1/lora/toggle", json={"use_lora": False}).status_code == 200
    assert run(server)[1]["lora"] == []
    assert server.post("/v1/lora/toggle", json={"use_lora": "true"}).status_code == 200
    assert run(server)[1]["lora"] == [{"name": "drums", "scale": 1.0}]
    # Upstream's lora_path, inside the LoRA folder.
    folder = server.get("/v1/loras").json()["data"]["directory"]
    assert server.post("/v1/lora/load", json={"lora_path": f"{folder}/voice"}).status_code == 200
    assert server.get("/v1/lora/status").json()["data"]["adapters"] == ["drums", "voice"]
    assert server.post("/v1/lora/unload", json={"name": "drums"}).status_code == 200
    assert server.get("/v1/lora/status").json()["data"]["adapters"] == ["voice"]
    assert server.post("/v1/lora/unload").status_code == 200
    assert run(server)[1]["lora"] == [] and np.array_equal(run(server)[0], base)


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/release_task", {"lora": "nothing"}, 400, "no LoRA named 'nothing'"),
        ("/release_task", {"lora": "broken"}, 400, "not a readable safetensors"),
        ("/release_task", {"lora": "old"}, 400, "pickles"),
        ("/release_task", {"lora": "fast"}, 400, "trained on the turbo DiT; this model is base"),
        ("/release_task", {"lora": "../drums"}, 400, "not paths"),
        ("/release_task", {"lora": "drums", "lora_scale": 9}, 400, "between 0 and 4"),
        ("/release_task", {"lora": "drums", "lora_scale": [1, 1]}, 400, "2 values for 1 adapters"),
        ("/v1/lora/load", {"name": "nothing"}, 404, "no LoRA named 'nothing'"),
        ("/v1/lora/load", {"name": "broken"}, 400, "not a readable safetensors"),
        ("/v1/lora/load", {"name": "fast"}, 400, "trained on the turbo DiT"),
        ("/v1/lora/load", {"lora_path": "/etc/passwd"}, 403, "inside the LoRA folder"),
        ("/v1/lora/load", {"name": "drums", "scale": "big"}, 400, "scale must be a number"),
        ("/v1/lora/load", {}, 400, "name the adapter"),
        ("/v1/lora/scale", {"scale": 1}, 409, "no default adapter"),
        ("/v1/lora/toggle", {"use_lora": "maybe"}, 400, "use_lora"),
    ],
)
def test_bad_adapters_are_4xx_and_the_server_keeps_serving(server, path, body, status, needle):
    response = server.post(path, json=BODY | body if path == "/release_task" else body)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]
    assert server.get("/v1/lora/status").json()["data"]["adapters"] == []
    assert run(server, lora="voice")[1]["lora"] == [{"name": "voice", "scale": 1.0}]


def test_lego_takes_an_adapter(server, source_wav):
    with source_wav.open("rb") as handle:
        response = server.post(
            "/lego",
            data={
                "track_type": "drums",
                "bpm": "100",
                "seed": "5",
                "lora": "drums",
                "lora_scale": "0.5",
                "response": "json",
                "audio_duration": "2",  # of the 6 s source: the claim is the adapter, not the length
            },  # fmt: skip
            files={"audio_file": ("song.wav", handle.read(), "audio/wav")},
        )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["items"][0]["lora"] == [{"name": "drums", "scale": 0.5}]


def test_a_lora_load_never_loads_or_wakes_the_model(server):
    drums, _ = run(server, lora="drums")
    assert server.post("/unload", json={"level": "free"}).status_code == 200
    loaded = server.post("/v1/lora/load", json={"name": "drums"})
    assert loaded.status_code == 200 and "next job" in loaded.json()["data"]["note"]
    assert server.get("/health").json()["data"]["model_state"] == "unloaded"
    sticky, item = run(server)  # the model loads for the job, with the default adapter
    assert item["lora"] == [{"name": "drums", "scale": 1.0}] and np.array_equal(sticky, drums)
    assert server.post("/unload", json={"level": "park"}).status_code == 200
    assert server.post("/v1/lora/load", json={"name": "voice"}).status_code == 200
    status = server.get("/v1/memory").json()["data"]
    assert status["worker"]["state"] == "parked" and status["residency"]["lora"] == "cpu"
    assert {a["name"] for a in status["adapters"]["loaded"]} == {"drums", "voice"}
    assert server.post("/v1/lora/unload").status_code == 200
    assert server.get("/v1/memory").json()["data"]["adapters"]["loaded"] == []
