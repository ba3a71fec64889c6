"""The cluster end to end: a real redis-server, 2 API servers and 3 ``acestep-worker`` processes
on tiny checkpoints (one turbo, two base) process 200 mixed jobs; every result is fetchable from
either server, lego jobs run on base workers, and stats and metrics agree."""

from __future__ import annotations

import io
import json
import re
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from _cluster import (
    BASE,
    TURBO,
    cluster_env,
    query_many,
    two_model_checkpoint,
    two_servers,
    wait_for_workers,
    wait_until,
)
from _redis import RedisServer
from _server import Server

from acestep.testing import synthetic_audio

JOBS = 200


def wav_bytes(seconds: float, seed: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_audio(seconds, seed=seed), 48000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    redis_server = RedisServer(root / "redis")
    checkpoint = two_model_checkpoint(root / "checkpoints")
    env = cluster_env(redis_server.url, root) | {"ACESTEP_CHECKPOINTS_DIR": str(checkpoint)}
    try:
        models = {"w-turbo": TURBO, "w-base-1": BASE, "w-base-2": BASE}
        with two_servers(env, root, checkpoint, models) as (servers, workers):
            yield servers, workers, redis_server, root
    finally:
        redis_server.stop()


def _submit(server: Server, index: int) -> tuple[str, str]:
    """Four kinds of job, in turn: lego (base only), text2music on turbo, text2music with no model
    (the router picks), and text2music on base. Returns (task id, kind)."""
    common = {"inference_steps": "2", "batch_size": "1", "audio_format": "wav", "seed": str(1000 + index)}
    kind = ("lego", "turbo", "auto", "base")[index % 4]
    if kind == "lego":
        fields = common | {"task_type": "lego", "track_name": "drums", "prompt": "tight drums"}
        files = {"ctx_audio": ("song.wav", wav_bytes(1.5, seed=index), "audio/wav")}
        return server.release(data=fields, files=files), kind
    body = common | {"prompt": f"job {index}", "audio_duration": "2"}
    if kind != "auto":
        body["model"] = TURBO if kind == "turbo" else BASE
    return server.release(data=body), kind


def test_two_servers_three_workers_run_200_mixed_jobs(cluster):
    servers, workers, _, root = cluster
    jobs = [_submit(servers[i % 2], i) for i in range(JOBS)]
    ids = [task for task, _ in jobs]

    def all_done():
        entries = []
        for start in range(0, JOBS, 50):
            entries += query_many(servers[(start // 50) % 2], ids[start : start + 50])
        return entries if all(e["status"] != 0 for e in entries) else None

    entries = wait_until(all_done, timeout=900, what="200 jobs", interval=1.0)
    failed = [e for e in entries if e["status"] != 1]
    assert not failed, failed[:3]

    ran_on = Counter()
    for (_, kind), entry in zip(jobs, entries, strict=True):
        item = json.loads(entry["result"])[0]
        model = item["dit_model"]
        assert model == {"lego": BASE, "turbo": TURBO, "base": BASE}.get(kind, model), (kind, item)
        ran_on[model] += 1
        # Every result from either server, byte for byte the same file.
        first, second = (s.download(item["file"]) for s in servers)
        assert first == second and len(first) > 1000
        audio, rate = sf.read(io.BytesIO(first), dtype="float32")
        assert rate == 48000 and np.isfinite(audio).all()
    assert ran_on[BASE] >= JOBS // 2 and ran_on[TURBO] >= JOBS // 4
    assert not list((root / "shared" / "uploads").iterdir())  # every lego upload was deleted

    stats = [s.get("/v1/stats").json()["data"] for s in servers]
    assert stats[0]["backend"] == "redis" and stats[0]["jobs"] == stats[1]["jobs"]
    assert stats[0]["jobs"]["succeeded"] >= JOBS and stats[0]["queue_size"] == 0
    done = {w["name"]: w["jobs_succeeded"] for w in stats[0]["workers"]}
    assert all(done[w.name] > 0 for w in workers), done  # both base workers shared the base queue
    assert sum(done.values()) == stats[0]["jobs"]["succeeded"]

    metrics = servers[1].get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    succeeded = re.search(r'^acestep_jobs\{state="succeeded"\} (\S+)$', text, re.M)
    assert succeeded and float(succeeded.group(1)) == stats[0]["jobs"]["succeeded"]
    for worker in workers:
        labels = rf'gpu="\d",model="[^"]+",worker="{worker.name}-[0-9a-f]{{6}}"'
        assert re.search(rf"^acestep_worker_up\{{{labels}\}} 1.0$", text, re.M)
    count = re.search(r"^acestep_job_duration_seconds_count (\S+)$", text, re.M)
    assert count and float(count.group(1)) >= JOBS


def test_same_seed_gives_the_same_audio_on_either_base_worker(cluster):
    servers = cluster[0]
    body = {"prompt": "same", "audio_duration": "2", "seed": "77", "inference_steps": "2", "batch_size": "1",
            "audio_format": "wav", "model": BASE}  # fmt: skip
    ids = [servers[i % 2].release(data=body) for i in range(6)]
    entries = [servers[0].wait(task) for task in ids]
    assert {e["items"][0]["seed_value"] for e in entries} == {"77"}
    audio = [
        sf.read(io.BytesIO(servers[1].download(e["items"][0]["file"])), dtype="float32")[0] for e in entries
    ]
    # The WAV header carries a timestamp, so the samples are compared, not the bytes.
    assert all(np.array_equal(audio[0], other) for other in audio[1:])


def test_models_health_unload_and_cancel_across_the_cluster(cluster):
    servers, workers, _, _ = cluster
    models = {m["name"]: m for m in servers[0].get("/v1/models").json()["data"]["models"]}
    assert models[BASE]["workers"] == 2 and models[TURBO]["workers"] == 1
    assert (
        "lego" in models[BASE]["supported_task_types"] and "lego" not in models[TURBO]["supported_task_types"]
    )
    health = servers[1].get("/health").json()["data"]
    assert health["queue"] == "ok" and health["live_workers"] == 3 and health["models_initialized"]

    unloaded = servers[0].post("/unload", json={"level": "park"}).json()["data"]
    assert {i.rsplit("-", 1)[0] for i in unloaded["workers"]} == {w.name for w in workers}
    assert not unloaded["no_reply"]
    assert all(r["ok"] and r["report"]["action"] == "park" for r in unloaded["workers"].values())
    parked = servers[1].get("/v1/memory").json()["data"]
    assert {w["name"]: w["state"] for w in parked["workers"] if w["alive"]} == {
        w.name: "parked" for w in workers
    }
    servers[1].post("/v1/load")
    wait_for_workers(servers[0], {w.name for w in workers})

    # A lego request to the turbo model is refused up front, with the reason.
    lego = {"task_type": "lego", "model": TURBO, "track_name": "drums"}
    source = {"ctx_audio": ("s.wav", wav_bytes(1.5, seed=1), "audio/wav")}
    refused = servers[0].post("/release_task", data=lego, files=source)
    assert refused.status_code == 400 and "cannot run lego" in refused.json()["detail"]

    # Cancelled on one server while queued behind long jobs, seen as cancelled on the other.
    slow = {
        "prompt": "long",
        "audio_duration": "30",
        "inference_steps": "30",
        "batch_size": "1",
        "model": TURBO,
    }
    blockers = [servers[0].release(data=slow) for _ in range(2)]
    victim = servers[0].release(data=slow | {"seed": "5"})
    outcome = servers[1].post("/v1/cancel", json={"task_id": victim}).json()["data"]["outcome"]
    assert outcome in ("cancelled", "cancelling")
    entry = servers[0].wait(victim)
    assert entry["status"] == 2 and "cancel" in entry["error"]
    for task in blockers:
        servers[1].post("/v1/cancel", json={"task_id": task})
    for task in blockers:
        servers[0].wait(task)
