"""The cluster's job transitions on a real redis-server: claim counts starts, the first finish
wins, cancel and release, retention with one taker, and a duplicate delivery that never yields
two results for one task id (two workers, one a presumed-dead one that finishes late)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from _redis import RedisServer

from acestep.cluster.broker import QueuedMessage, make_broker, queue_name, redis_client
from acestep.cluster.executors import NoopExecutor
from acestep.cluster.records import JobRecord
from acestep.cluster.settings import ClusterSettings
from acestep.cluster.store import JobStore
from acestep.cluster.worker import ClusterWorker
from acestep.request import GenerationRequest


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


def _message(store: JobStore, task_id: str, model: str = "m") -> QueuedMessage:
    return QueuedMessage.for_job(ClusterSettings(url="redis://unused", namespace=store.ns), model, task_id)


def _queued(store: JobStore, model: str = "m") -> int:
    """Messages waiting on the model's dramatiq queue."""
    return store.client.llen(f"{store.ns}-dq:{queue_name(model)}")


def _new(store: JobStore, model: str = "m", **request) -> JobRecord:
    record = JobRecord(
        id=f"job-{time.monotonic_ns()}",
        request=GenerationRequest(caption="x", **request),
        model=model,
        created=time.time(),
        cleanup=["/nowhere/upload.wav"],
    )
    before = _queued(store, model)
    assert store.create(record, _message(store, record.id, model))
    assert not store.create(record, _message(store, record.id, model))  # never twice, nor a 2nd message
    assert _queued(store, model) == before + 1  # the record and its message together
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
    assert store.claim(record.id, "w1", 2, "t1") == ("run", 1)
    assert store.position(record.id, "m") is None and store.counts()["running"] == 1
    assert store.progress(record.id, "w1", "diffusion", 0.5) == 0
    assert store.progress(record.id, "w2", "diffusion", 0.9) == -1  # not w2's job
    assert store.finish(record.id, "w1", "t1", error="boom", kind="generation", duration=1.5) == "ok"
    assert store.finish(record.id, "w2", "t2", error="other", kind="internal", duration=1.0) == "done"
    back = store.get(record.id)
    assert (back.state, back.error, back.error_kind, back.worker) == ("failed", "boom", "generation", "w1")
    assert store.claim(record.id, "w3", 2, "t3")[0] == "done"
    assert store.counts() == {"queued": 0, "running": 0, "succeeded": 0, "failed": 1}
    histogram = store.histogram()
    assert histogram["count"] == 1 and histogram["sum"] == 1.5
    assert dict(histogram["buckets"])[2.0] == 1 and dict(histogram["buckets"])[1.0] == 0


def test_a_replayed_claim_or_finish_gets_the_same_answer(store):
    """redis-py resends a command whose reply was lost (Redis died after writing it)."""
    record = _new(store)
    assert store.claim(record.id, "w1", 2, "tok") == ("run", 1)
    assert store.claim(record.id, "w1", 2, "tok") == ("run", 1)  # not "raced", not a second start
    assert store.claim(record.id, "w1", 2, "other-delivery")[0] == "raced"
    assert store.finish(record.id, "w1", "tok", error="x", kind="input") == "ok"
    assert store.finish(record.id, "w1", "tok", error="x", kind="input") == "ok"  # not "done"
    assert store.finish(record.id, "w2", "late", error="y", kind="input") == "done"
    assert store.histogram()["count"] == 1


def test_a_third_start_fails_the_job_with_the_reason(store):
    record = _new(store)
    assert store.claim(record.id, "w1", 2, "a") == ("run", 1)
    assert store.claim(record.id, "w2", 2, "b", expected="someone-else")[0] == "raced"
    assert store.claim(record.id, "w2", 2, "c", expected="w1") == ("run", 2)
    assert store.claim(record.id, "w3", 2, "d", expected="w2")[0] == "exhausted"
    back = store.get(record.id)
    assert back.state == "failed" and back.error_kind == "worker_lost"
    assert "stopped (killed or crashed) 2 times, last w2" in back.error


def test_cancel_while_queued_and_while_running(store):
    queued = _new(store)
    assert store.cancel(queued.id) == "cancelled"
    assert store.claim(queued.id, "w1", 2, "a")[0] == "done"
    assert store.get(queued.id).error_kind == "cancelled"
    running = _new(store)
    store.claim(running.id, "w1", 2, "b")
    assert store.cancel(running.id) == "cancelling"
    assert store.progress(running.id, "w1", "diffusion", 0.2) == 1
    assert store.cancel("no-such-job") == "unknown"
    store.finish(running.id, "w1", "b", error="cancelled by request", kind="cancelled")
    assert store.cancel(running.id) == "finished"


def test_release_hands_a_job_back_without_counting_the_start(store):
    record = _new(store)
    store.claim(record.id, "w1", 2, "a")
    before = _queued(store)
    assert not store.release(record.id, "w2", _message(store, record.id))  # only the owner can
    assert store.release(record.id, "w1", _message(store, record.id))
    assert not store.release(record.id, "w1", _message(store, record.id))  # a replay adds nothing
    assert _queued(store) == before + 1  # handed back with a new message, atomically
    back = store.get(record.id)
    assert (back.state, back.attempts) == ("queued", 0) and store.position(record.id, "m") == 1
    assert store.claim(record.id, "w2", 2, "b") == ("run", 1)


def test_expired_records_are_taken_by_exactly_one_sweeper(store):
    records = [_new(store) for _ in range(20)]
    for record in records:
        store.claim(record.id, "w", 2, "t")
        store.finish(record.id, "w", "t", error="x", kind="input")
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


def _presumed_dead_run(settings, tmp_path):
    """Worker A runs a job held at a gate and looks dead (it never advertised); B takes it over."""
    a = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "worker-a")
    b = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "worker-b")
    record = _new(a.store)
    gate = threading.Event()
    original = a.executor.run

    def gated(rec, out, report):
        gate.wait(30)
        return original(rec, out, lambda stage, fraction: False)  # cut off: hears nothing

    a.executor.run = gated
    thread = threading.Thread(target=a.handle, args=(record.id,))
    thread.start()
    while a.store.get(record.id).state != "running":
        time.sleep(0.01)
    assert not a.store.alive(a.id)
    return a, b, record, gate, thread


def test_a_duplicate_delivery_never_gives_two_results_takeover_first(settings, tmp_path):
    a, b, record, gate, thread = _presumed_dead_run(settings, tmp_path)
    b.handle(record.id)  # takeover (start 2) finishes first
    gate.set()
    thread.join()  # A finishes late: told "done", deletes only its own folder
    back = b.store.get(record.id)
    assert (back.state, back.worker, back.attempts) == ("succeeded", b.id, 2)
    assert all(Path(p).is_file() for p in back.result.audio_paths)
    assert [p.name for p in (tmp_path / record.id).iterdir()] == [f"{b.id}.2"]


def test_a_duplicate_delivery_never_gives_two_results_original_first(settings, tmp_path):
    a, b, record, gate, thread = _presumed_dead_run(settings, tmp_path)
    b_gate = threading.Event()
    original = b.executor.run
    b.executor.run = lambda rec, out, report: (b_gate.wait(30), original(rec, out, lambda *_: False))[1]
    takeover = threading.Thread(target=b.handle, args=(record.id,))
    takeover.start()
    while b.store.get(record.id).worker != b.id:
        time.sleep(0.01)
    gate.set()
    thread.join()  # the original finishes first: its result stands
    b_gate.set()
    takeover.join()
    back = a.store.get(record.id)
    assert (back.state, back.worker) == ("succeeded", a.id)
    assert all(Path(p).is_file() for p in back.result.audio_paths)
    assert [p.name for p in (tmp_path / record.id).iterdir()] == [f"{a.id}.1"]


def test_a_second_delivery_while_the_owner_lives_is_skipped(settings, tmp_path):
    a = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "live-a")
    b = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "live-b")
    record = _new(a.store)
    a.store.claim(record.id, a.id, 2, "t")
    a._beat()  # live-a is alive and owns the running job
    b.handle(record.id)
    back = b.store.get(record.id)
    assert (back.state, back.worker, back.attempts) == ("running", a.id, 1)


def test_a_restarted_worker_with_the_same_name_takes_its_old_job_over(settings, tmp_path):
    old = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "same-name")
    record = _new(old.store)
    old.store.claim(record.id, old.id, 2, "t")  # then killed: no heartbeat, no finish
    new = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "same-name")
    assert new.id != old.id and new.id.startswith("same-name-")
    new.handle(record.id)
    back = new.store.get(record.id)
    assert (back.state, back.worker, back.attempts) == ("succeeded", new.id, 2)


def test_an_lm_only_job_succeeds_without_files(settings, tmp_path):
    worker = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "lm")
    record = JobRecord(id="lm-job", request=GenerationRequest(caption="tidy me"), model="m", lm_only=True)
    worker.store.create(record, _message(worker.store, record.id))
    worker.handle(record.id)
    back = worker.store.get(record.id)
    assert back.state == "succeeded" and back.result.items == [] and back.result.metas["caption"] == "tidy me"
    assert not (tmp_path / record.id).exists()


def test_a_job_the_worker_cannot_read_fails_with_the_reason(settings, tmp_path):
    worker = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "old")
    record = _new(worker.store)
    worker.client.hset(worker.store.key("job", record.id), "request", '{"caption": "x", "new_field": 1}')
    worker.handle(record.id)  # e.g. a request from a newer acestep: failed, not left running
    data = worker.client.hgetall(worker.store.key("job", record.id))
    assert data[b"state"] == b"failed" and data[b"error_kind"] == b"input"
    assert b"cannot read the job" in data[b"error"]


def test_the_reaper_requeues_a_job_whose_worker_stays_silent(settings, tmp_path):
    from acestep.cluster.queue import RedisJobQueue

    queue = RedisJobQueue(settings, tmp_path, "m", ["text2music"], "turbo", repairs=False)
    try:
        orphan = _new(queue.store)  # its worker died, and its message was lost (acked elsewhere)
        queue.store.claim(orphan.id, "gone-worker", 2, "t")
        queue.store.client.delete(f"{queue.store.ns}-dq:{queue_name('m')}")
        live = _new(queue.store)
        owner = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "alive")
        queue.store.claim(live.id, owner.id, 2, "u")
        owner._beat()
        assert queue.reap() == 0  # first seen silent: a live worker gets a heartbeat timeout to beat
        time.sleep(settings.heartbeat_timeout_s + 0.2)
        owner._beat()
        assert queue.reap() == 1 and queue.reap() == 0
        back = queue.store.get(orphan.id)
        assert (back.state, back.attempts) == ("queued", 1) and _queued(queue.store) == 2  # + live's
        assert queue.store.get(live.id).state == "running"  # its worker beats: untouched
        worker = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "w")
        worker.handle(orphan.id)
        assert (queue.store.get(orphan.id).state, queue.store.get(orphan.id).attempts) == ("succeeded", 2)
    finally:
        queue.close()


def test_messages_go_to_the_model_queue(settings):
    client = redis_client(settings, retries=0)
    broker = make_broker(settings, client)
    assert queue_name("acestep-v15-base") == "model_acestep-v15-base"
    assert queue_name("odd name/with:chars") == "model_odd_name_with_chars"
    assert broker.heartbeat_timeout == 2000 and broker.middleware == []
    client.close()


def test_memory_controls_reach_a_live_worker_and_the_ui_lists_it(settings, tmp_path):
    from types import SimpleNamespace

    from acestep.cluster.control import ClusterControl
    from acestep.cluster.queue import RedisJobQueue
    from acestep.ui.actions import memory_text
    from acestep.ui.i18n import strings

    queue = RedisJobQueue(settings, tmp_path, "m", ["text2music"], "turbo")
    control = ClusterControl(queue)
    assert control.unload("park")["note"] == "no live workers"
    worker = ClusterWorker(settings, NoopExecutor("m"), tmp_path, "ctl-worker", gpu="3")
    worker.start()
    try:
        parked = control.unload("park", timeout=30)
        assert parked["workers"][worker.id]["ok"] and parked["no_reply"] == []
        assert parked["workers"][worker.id]["report"]["action"] == "park"
        status = control.get_status()
        assert status["live_workers"] == 1 and status["workers"][0]["state"] == "parked"
        text = memory_text(SimpleNamespace(manager=control), strings("en"))
        assert "1 live workers" in text and f"`{worker.id}`: m parked" in text
        assert control.load(timeout=30)["workers"][worker.id]["report"]["action"] == "load"
        with pytest.raises(ValueError, match="park or free"):
            control.unload("sleep")
    finally:
        worker.stop()
    assert control.get_status()["live_workers"] == 0  # a stopped worker is listed offline at once
    assert control.get_status()["workers"][0]["alive"] is False
    queue.close()
