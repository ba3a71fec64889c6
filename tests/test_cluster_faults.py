"""Cluster faults with real processes: a worker killed with -9 mid-job (once: the job completes
elsewhere; twice: it fails with the reason), redis-server killed and restarted mid-run with AOF
(no accepted job lost), all workers stopped (jobs wait, then run when a worker returns), and a
worker stopped mid-job past its stop timeout (the job is handed back, not counted as a crash)."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from _cluster import BASE, HEARTBEAT_S, TURBO, Worker, cluster_env, two_model_checkpoint, wait_until
from _redis import RedisServer
from _server import Server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return two_model_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture
def cluster(tmp_path, checkpoint):
    """redis + one API server; tests start the workers they need. Yields a small namespace."""
    redis_server = RedisServer(tmp_path / "redis")
    env = cluster_env(redis_server.url, tmp_path) | {"ACESTEP_CHECKPOINTS_DIR": str(checkpoint)}
    (tmp_path / "api").mkdir()
    server = Server(checkpoint, tmp_path / "api", dit=TURBO, **env)
    workers: list[Worker] = []

    class Parts:
        pass

    parts = Parts()
    parts.redis, parts.server, parts.env, parts.workers, parts.root = (
        redis_server,
        server,
        env,
        workers,
        tmp_path,
    )

    def start_worker(name: str, *args: str, **extra: str) -> Worker:
        worker = Worker(env, tmp_path, name, *args, **extra)
        workers.append(worker)
        return worker

    parts.start_worker = start_worker
    try:
        yield parts
    finally:
        server.stop()
        for worker in workers:
            worker.stop()
        redis_server.stop()


def _record(parts, task_id: str) -> dict:
    return parts.redis.client().hgetall(f"acestep:job:{task_id}")


def _running_on(parts, task_id: str) -> str:
    return wait_until(
        lambda: (r := _record(parts, task_id)).get("state") == "running" and r.get("worker"),
        timeout=120,
        what=f"{task_id} to start",
    )


def _alive(parts) -> set[str]:
    """Names of the live workers (a worker's id is its name plus a random part)."""
    return {w["name"] for w in parts.server.get("/v1/stats").json()["data"]["workers"] if w["alive"]}


def test_a_worker_killed_mid_job_leaves_it_to_another_worker(cluster):
    # Real engines on the tiny base model; a long job so that the kill lands mid-diffusion.
    first = cluster.start_worker("base-a", "--dit", BASE)
    cluster.start_worker("base-b", "--dit", BASE)
    wait_until(lambda: _alive(cluster) == {"base-a", "base-b"}, 120, "two workers")
    body = {"prompt": "long", "audio_duration": "60", "inference_steps": "40", "batch_size": "1",
            "seed": "11", "model": BASE, "audio_format": "wav"}  # fmt: skip
    task = cluster.server.release(data=body)
    runner = _running_on(cluster, task)
    victim = first if runner.startswith("base-a-") else cluster.workers[1]
    wait_until(lambda: float(_record(cluster, task).get("progress", 0)) > 0, 120, "progress")
    victim.kill()
    entry = cluster.server.wait(task, timeout=300)
    assert entry["status"] == 1, entry
    record = _record(cluster, task)
    assert record["attempts"] == "2" and not record["worker"].startswith(victim.name + "-")
    assert entry["worker"] == record["worker"]
    audio = cluster.server.download(entry["items"][0]["file"])
    assert len(audio) > 60 * 48000


def test_a_job_whose_worker_is_killed_twice_fails_with_the_reason(cluster):
    hold = {"ACESTEP_NOOP_SECONDS": "60"}
    first = cluster.start_worker("noop-a", "--engine", "noop", "--dit", TURBO, **hold)
    wait_until(lambda: "noop-a" in _alive(cluster), 60, "worker a")
    task = cluster.server.release(data={"prompt": "doomed", "audio_duration": "5"})
    first_owner = _running_on(cluster, task)
    assert first_owner.startswith("noop-a-")
    first.kill()
    # Restarted under the same name, as compose's restart policy does: a new worker all the same.
    again = cluster.start_worker("noop-a", "--engine", "noop", "--dit", TURBO, **hold)
    second_owner = wait_until(
        lambda: (w := _record(cluster, task).get("worker")) != first_owner and w, 60, "the takeover"
    )
    assert second_owner.startswith("noop-a-") and _record(cluster, task)["attempts"] == "2"
    again.kill()
    cluster.start_worker("noop-c", "--engine", "noop", "--dit", TURBO)
    entry = cluster.server.wait(task, timeout=60)
    assert entry["status"] == 2
    assert "stopped (killed or crashed) 2 times" in entry["error"] and "not retried again" in entry["error"]
    assert second_owner in entry["error"]
    # The next job runs normally on the surviving worker.
    assert cluster.server.wait(cluster.server.release(data={"prompt": "fine"}), timeout=60)["status"] == 1


def test_redis_killed_and_restarted_mid_run_loses_no_accepted_job(cluster):
    for name in ("noop-1", "noop-2"):
        cluster.start_worker(name, "--engine", "noop", "--dit", TURBO, ACESTEP_NOOP_SECONDS="0.2")
    wait_until(lambda: _alive(cluster) == {"noop-1", "noop-2"}, 60, "workers")
    accepted = [cluster.server.release(data={"prompt": f"a{i}"}) for i in range(30)]
    cluster.redis.kill()  # kill -9 mid-run: only the AOF (appendfsync always) survives
    refused = cluster.server.post("/release_task", data={"prompt": "during the outage"})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert "unavailable" in refused.json()["detail"]
    health = cluster.server.get("/health")
    assert health.status_code == 200 and health.json()["data"]["queue"] == "unavailable"
    # Longer than the heartbeat timeout: after the restart every worker looks dead to the broker
    # for a moment, so running jobs are delivered again and must be recognised as duplicates.
    time.sleep(2 * HEARTBEAT_S)
    cluster.redis.start()
    accepted += [cluster.server.release(data={"prompt": f"b{i}"}) for i in range(30)]
    entries = [cluster.server.wait(task, timeout=120) for task in accepted]
    assert [e["status"] for e in entries] == [1] * len(accepted), [
        e["error"] for e in entries if e["status"] != 1
    ]
    stats = cluster.server.get("/v1/stats").json()["data"]
    assert stats["jobs"]["succeeded"] == len(accepted) and stats["queue_size"] == 0
    results = cluster.root / "shared" / "api_audio"
    for task, entry in zip(accepted, entries, strict=True):  # one result each, the recorded one
        (attempt,) = (results / task).iterdir()
        assert entry["items"][0]["file"].endswith(quote(f"{task}/{attempt.name}/noop_0.wav", safe=""))


def test_jobs_wait_while_every_worker_is_stopped_and_run_when_one_returns(cluster):
    worker = cluster.start_worker("noop-x", "--engine", "noop", "--dit", TURBO, ACESTEP_NOOP_SECONDS="1")
    wait_until(lambda: _alive(cluster) == {"noop-x"}, 60, "worker")
    in_flight = cluster.server.release(data={"prompt": "in flight"})
    _running_on(cluster, in_flight)
    worker.stop()  # graceful: the running job finishes first (stop timeout 20 s)
    assert worker.proc.returncode == 0
    assert cluster.server.query(in_flight)["status"] == 1
    waiting = [cluster.server.release(data={"prompt": f"w{i}"}) for i in range(10)]
    time.sleep(2)
    entries = [cluster.server.query(task) for task in waiting]
    assert all(e["status"] == 0 for e in entries)
    assert "queued (position" in entries[-1]["progress_text"]
    assert cluster.server.get("/v1/stats").json()["data"]["queue_size"] == 10
    cluster.start_worker("noop-y", "--engine", "noop", "--dit", TURBO)
    assert [cluster.server.wait(task, timeout=60)["status"] for task in waiting] == [1] * 10


def test_a_worker_stopped_past_its_timeout_hands_the_job_back_uncounted(cluster):
    slow = cluster.start_worker(
        "noop-slow",
        "--engine",
        "noop",
        "--dit",
        TURBO,
        ACESTEP_NOOP_SECONDS="30",
        ACESTEP_WORKER_STOP_TIMEOUT="1",
    )
    wait_until(lambda: _alive(cluster) == {"noop-slow"}, 60, "worker")
    task = cluster.server.release(data={"prompt": "long"})
    _running_on(cluster, task)
    slow.stop()
    assert slow.proc.returncode == 0
    record = _record(cluster, task)
    assert record["state"] == "queued" and record["attempts"] == "0", record
    cluster.start_worker("noop-fast", "--engine", "noop", "--dit", TURBO)
    entry = cluster.server.wait(task, timeout=60)
    assert entry["status"] == 1 and entry["worker"].startswith("noop-fast-")
    assert _record(cluster, task)["attempts"] == "1"
