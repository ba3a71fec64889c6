"""LoRA across a cluster: a real redis-server, two API servers, a turbo and a base
``acestep-worker``; adapters are checked against the model a job is routed to, the default set
through one server holds for both, and load/unload reach every worker it fits."""

from __future__ import annotations

import numpy as np
import pytest
from _cluster import BASE, TURBO, cluster_env, two_model_checkpoint, two_servers
from _redis import RedisServer
from _server import Server

from acestep.testing import make_tiny_lora

BODY = {"prompt": "drums", "audio_duration": 2, "seed": 21, "batch_size": 1, "inference_steps": 2,
        "audio_format": "wav32", "model": BASE}  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_lora")
    redis_server = RedisServer(root / "redis")
    checkpoint = two_model_checkpoint(root / "checkpoints")
    folder = root / "loras"
    make_tiny_lora(folder / "drums", variant="base", rank=4, seed=1)
    make_tiny_lora(folder / "speedy", layout="peft", variant="turbo", rank=2, seed=2)
    env = cluster_env(redis_server.url, root) | {
        "ACESTEP_CHECKPOINTS_DIR": str(checkpoint),
        "ACESTEP_LORA_DIR": str(folder),
    }
    try:
        with two_servers(env, root, checkpoint, {"w-turbo": TURBO, "w-base": BASE}) as (servers, _):
            yield servers
    finally:
        redis_server.stop()


def run(server: Server, **fields) -> tuple[np.ndarray, dict]:
    return server.generate(BODY | fields)


def test_adapters_follow_the_model_a_job_runs_on(cluster):
    a, b = cluster
    base, _ = run(a)
    drums, item = run(a, lora="drums")
    assert item["dit_model"] == BASE and item["lora"] == [{"name": "drums", "scale": 1.0}]
    assert not np.array_equal(drums, base)
    assert np.array_equal(run(b, lora="drums")[0], drums)  # the other server, the same audio
    assert np.array_equal(run(b)[0], base)
    # Named for a job that goes to the turbo model: refused before it is queued.
    refused = a.post("/release_task", json=BODY | {"model": TURBO, "lora": "drums"})
    assert refused.status_code == 400 and "trained on the base DiT; this model is turbo" in refused.text
    assert a.post("/release_task", json=BODY | {"lora": "ghost"}).status_code == 400


def test_the_default_is_shared_and_fits_only_its_model(cluster):
    a, b = cluster
    base, _ = run(a)
    loaded = a.post("/v1/lora/load", json={"name": "drums", "scale": 1.0})
    assert loaded.status_code == 200, loaded.text
    replies = loaded.json()["data"]["workers"]
    assert sorted(reply["ok"] for reply in replies.values()) == [False, True]  # turbo refused it
    assert b.get("/v1/lora/status").json()["data"]["adapters"] == ["drums"]  # one default, in Redis
    sticky, item = run(b)
    assert item["lora"] == [{"name": "drums", "scale": 1.0}] and not np.array_equal(sticky, base)
    task = b.release(json=BODY | {"model": TURBO})
    entry = b.wait(task)
    assert entry["status"] == 1 and entry["items"][0]["lora"] == []  # the default does not fit turbo
    assert b.post("/v1/lora/load", json={"name": "speedy"}).status_code == 200
    assert b.post("/v1/lora/unload", json={}).status_code == 200
    assert a.get("/v1/lora/status").json()["data"]["adapters"] == []
    assert np.array_equal(run(a)[0], base)
