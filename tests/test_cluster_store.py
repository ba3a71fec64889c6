"""The cluster's job transitions on a real redis-server: claim counts starts, the first finish
wins, cancel and release, retention with one taker, and a duplicate delivery that never yields
two results for one task id (two workers, one a presumed-dead one that finishes late)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from _redis import RedisServer

from acestep.cluster.broker import make_broker, queue_name, redis_client
from acestep.cluster.executors import NoopExecutor
from acestep.cluster.records import JobRecord
from acestep.cluster.settings import ClusterSettings
from acestep.cluster.store import JobStore
from acestep.cluster.worker import ClusterWorker
from acestep.engine.request import GenerationRequest


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server, request):
    # One namespace per test: tests share the server, never each other's keys.
    return ClusterSettings(
        url=redis_server.url, namespace=f"t{abs(hash(request.node.name)) % 10**8}", heartbeat_timeout_s=2
    )


@pytest.fixture
def store(settings):
    client = redis_client(settings, retries=0)
    yield JobStore(client, settings.namespace)
    client.close()


def _new(store: JobStore, model: str = "m", **request) -> JobRecord:
    record = JobRecord(
        id=f"job-{time.monotonic_ns()}",
        request=GenerationRequest(caption="x", **request),
        model=model,
        created=time.time(),
        cleanup=["/nowhere/upload.wav"],
    )
    assert store.create(record) and not store.create(record)  # ids are never created twice
    return record


def test_a_record_round_trips_with_the_fields_the_caller_wrote(store):
    record = _new(store, seed=42, time_signature="3/4")
    back = store.get(record.id)
    assert back.state == "queued" and back.model == "m" and back.cleanup == ["/nowhere/upload.wav"]
    assert back.request == record.request
    assert not back.request.wants_random_seed  # "seed was written" survives the round trip
    assert store.position(record.id, "m") == 1 and store.pending()["m"] == 1


def test_the_first_finish_wins_and_a_claim_after_it_is_told_done(store):
    record = _new(store)
    assert store.claim(record.id, "w1", 2) == ("run", 1)
    assert store.position(record.id, "m") is None and store.counts()["running"] == 1
    assert store.progress(record.id, "w1", "diffusion", 0.5) == 0
    assert store.progress(record.id, "w2", "diffusion", 0.9) == -1  # not w2's job
    assert store.finish(record.id, "w1", error="boom", kind="generation", duration=1.5) == "ok"
    assert store.finish(record.id, "w2", error="other", kind="internal", duration=1.0) == "done"
    back = store.get(record.id)
    assert (back.state, back.error, back.error_kind, back.worker) == ("failed", "boom", "generation", "w1")
    assert store.claim(record.id, "w3", 2)[0] == "done"
    assert store.counts() == {"queued": 0, "running": 0, "succeeded": 0, "failed": 1}
    histogram = store.histogram()
    assert histogram["count"] == 1 and histogram["sum"] == 1.5
    assert dict((b, c) for b, c in histogram["buckets"])[2.0] == 1 and dict(histogram["buckets"])[1.0] == 0


def test_a_third_start_fails_the_job_with_the_reason(store):
    record = _new(store)
    assert store.claim(record.id, "w1", 2) == ("run", 1)
    assert store.claim(record.id, "w2", 2, expected="someone-else")[0] == "raced"
    assert store.claim(record.id, "w2", 2, expected="w1") == ("run", 2)
    assert store.claim(record.id, "w3", 2, expected="w2")[0] == "exhausted"
    back = store.get(record.id)
    assert back.state == "failed" and back.error_kind == "worker_lost"
    assert "stopped (killed or crashed) 2 times, last w2" in back.error


def test_cancel_while_queued_and_while_running(store):
    queued = _new(store)
    assert store.cancel(queued.id) == "cancelled"
    assert store.claim(queued.id, "w1", 2)[0] == "done"
    assert store.get(queued.id).error_kind == "cancelled"
    running = _new(store)
    store.claim(running.id, "w1", 2)
    assert store.cancel(running.id) == "cancelling"
    assert store.progress(running.id, "w1", "diffusion", 0.2) == 1
    assert store.cancel("no-such-job") == "unknown"
    store.finish(running.id, "w1", error="cancelled by request", kind="cancelled")
    assert store.cancel(running.id) == "finished"


def test_release_hands_a_job_back_without_counting_the_start(store):
    record = _new(store)
    store.claim(record.id, "w1", 2)
    assert not store.release(record.id, "w2")  # only the owner can
    assert store.release(record.id, "w1")
    back = store.get(record.id)
    assert (back.state, back.attempts) == ("queued", 0) and store.position(record.id, "m") == 1
    assert store.claim(record.id, "w2", 2) == ("run", 1)


def test_expired_records_are_taken_by_exactly_one_sweeper(store):
    records = [_new(store) for _ in range(20)]
    for record in records:
        store.claim(record.id, "w", 2)
        store.finish(record.id, "w", error="x", kind="input")
    taken: list[list[str]] = [[], []]
    threads = [threading.Thread(target=lambda i=i: taken[i].extend(store.expire_finished(time.time() + 1)))
               for i in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken[0] + taken[1]) == sorted(r.id for r in records)
    assert not set(taken[0]) & set(taken[1])
    assert all(store.get(r.id) is None for r in records) and store.counts()["failed"] == 0


def test_a_duplicate_delivery_never_gives_two_results(settings, tmp_path):
    """Worker A runs the job and looks dead (its liveness key gone, as after a network cut); B
    takes it over and finishes first; A finishes late. One result stands, B's, with one folder."""
    a = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "worker-a")
    b = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "worker-b")
    record = _new(a.store)
    gate = threading.Event()
    original = a.executor.run

    def slow_run(rec, out, report):
        gate.wait(30)
        return original(rec, out, report)

    a.executor.run = slow_run
    thread = threading.Thread(target=a.handle, args=(record.id,))
    thread.start()
    while a.store.get(record.id).state != "running":
        time.sleep(0.01)
    assert not a.store.alive("worker-a")  # never advertised: presumed dead
    b.handle(record.id)  # takeover: start 2
    gate.set()
    thread.join()
    back = b.store.get(record.id)
    assert (back.state, back.worker, back.attempts) == ("succeeded", "worker-b", 2)
    assert [Path(p).parent.name for p in back.result.audio_paths] == [record.id]
    assert all(Path(p).is_file() for p in back.result.audio_paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging", record.id]
    assert not list((tmp_path / ".staging").iterdir())


def test_a_second_delivery_while_the_owner_lives_is_skipped(settings, tmp_path):
    a = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "live-a")
    b = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "live-b")
    record = _new(a.store)
    a.store.claim(record.id, "live-a", 2)
    a._beat()  # live-a is alive and owns the running job
    b.handle(record.id)
    back = b.store.get(record.id)
    assert (back.state, back.worker, back.attempts) == ("running", "live-a", 1)


def test_messages_go_to_the_model_queue(settings):
    client = redis_client(settings, retries=0)
    broker = make_broker(settings, client)
    assert queue_name("acestep-v15-base") == "model_acestep-v15-base"
    assert queue_name("odd name/with:chars") == "model_odd_name_with_chars"
    assert broker.heartbeat_timeout == 2000 and broker.middleware == []
    client.close()
