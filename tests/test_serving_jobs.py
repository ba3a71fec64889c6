"""The embedded job queue: retention removes old records with their files; queue bounds."""

from __future__ import annotations

import time

import pytest

from acestep import GenerationRequest
from acestep.jobs.queue import LocalJobQueue, QueueFull
from acestep.memory.gpus import StaticSource
from acestep.memory.manager import MemoryManager
from acestep.serving.wire import query_entry
from acestep.worker.runner import EngineSpec
from acestep.worker.supervisor import Supervisor


@pytest.fixture
def queue(upstream_turbo, tmp_path):
    manager = Supervisor(MemoryManager(source=StaticSource([]), env={"ACESTEP_KEEP_ALIVE": "-1"}))
    manager.start(EngineSpec(str(upstream_turbo), device="cpu"), in_process=True)
    jobs = LocalJobQueue(manager, tmp_path / "results", maxsize=2, result_ttl_s=3600, cleanup_interval_s=3600)
    yield jobs
    jobs.close()
    manager.close()


def request(**fields) -> GenerationRequest:
    base = {"audio_duration": 6, "batch_size": 1, "seed": 1, "audio_format": "wav"}
    return GenerationRequest(**(base | fields))


def test_retention_removes_old_records_and_their_files(queue, tmp_path):
    upload = tmp_path / "upload.wav"
    upload.write_bytes(b"placeholder")  # any file handed over for cleanup
    job = queue.submit(request(), cleanup=[upload]).wait(60)
    assert job.state == "succeeded" and not upload.exists()  # inputs go when the job ends
    folder = tmp_path / "results" / job.id
    assert folder.is_dir() and [p.parent for p in map(type(folder), job.result.audio_paths)] == [folder]
    assert queue.sweep(now=job.finished + 3599) == 0 and queue.get(job.id) is job
    assert queue.sweep(now=job.finished + 3600) == 1
    assert queue.get(job.id) is None and not folder.exists()
    entry = query_entry(job.id, queue.get(job.id))
    assert entry["status"] == 2 and "expired" in entry["error"]


def test_a_full_queue_refuses_with_a_retry_hint(queue):
    running = queue.submit(request(audio_duration=20))
    deadline = time.monotonic() + 60
    while running.state == "queued":  # wait until it has left the queue for the worker
        assert time.monotonic() < deadline
        time.sleep(0.01)
    queued = [queue.submit(request(seed=s)) for s in (2, 3)]
    with pytest.raises(QueueFull, match="queue is full") as err:
        queue.submit(request(seed=4))
    assert err.value.retry_after >= 1
    for job in (running, *queued):
        assert job.wait(120).state == "succeeded"
    stats = queue.stats()
    assert stats["jobs"]["succeeded"] == 3 and stats["queue_size"] == 0 and stats["avg_job_seconds"] > 0
