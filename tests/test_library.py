"""The job library (acestep/jobs/library.py) over real files: the record the queue writes when a
generation ends, its copy of the uploaded source, listing, filters, rating and deletion, and the
retention sweep that still removes a rated job once it is older than the TTL."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from acestep.jobs.library import RECORD, Library, record_job
from acestep.jobs.retention import Retention
from acestep.request import GenerationRequest
from acestep.result import AudioItem, GenerationResult
from acestep.worker.job import Job, JobState

LIMIT = 2**20


def finished_job(results: Path, request: GenerationRequest, finished: float, state=JobState.SUCCEEDED) -> Job:
    """A job as the dispatcher hands it to its completion hooks: its file written in its folder."""
    job_id = str(uuid.uuid4())
    folder = results / job_id
    folder.mkdir(parents=True)
    audio = folder / "take.wav"
    audio.write_bytes(b"RIFF....WAVE")
    result = GenerationResult(
        items=[AudioItem(path=str(audio), seed=17, sample_rate=48000, duration=2.0, peak=0.5)],
        sample_rate=48000,
        task_type=request.task_type,
        model="acestep-v15-base",
        variant="base",
        metas={"bpm": request.bpm},
        timings={"total": 1.0},
    )
    return Job(
        id=job_id,
        request=request,
        output_dir=str(folder),
        keep_alive=0,
        state=state,
        result=result if state == JobState.SUCCEEDED else None,
        started=finished - 1,
        finished=finished,
    )


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "results"
    path.mkdir()
    return path


def test_a_finished_job_is_recorded_with_a_copy_of_its_source(results: Path, tmp_path: Path):
    upload = tmp_path / "uploads" / "ui_source.wav"
    upload.parent.mkdir()
    upload.write_bytes(b"RIFF-source-bytes")
    request = GenerationRequest(task_type="cover", caption="dusty piano", src_audio=str(upload), bpm=90)
    job = finished_job(results, request, time.time())
    path = record_job(job, LIMIT, uploads=[upload])
    upload.unlink()  # the queue's next hook deletes the upload

    assert path == results / job.id / RECORD
    stored = json.loads(path.read_text())
    assert stored["request"]["caption"] == "dusty piano" and stored["seeds"] == [17]
    assert stored["items"][0]["file"] == "take.wav" and stored["rating"] is None
    record = Library(results).get(job.id)
    source = Path(record["request"]["src_audio"])
    assert source.parent == results / job.id and source.read_bytes() == b"RIFF-source-bytes"
    assert record["paths"] == [str(results / job.id / "take.wav")]


def test_no_record_for_failures_and_no_copy_over_the_limit(results: Path, tmp_path: Path):
    failed = finished_job(results, GenerationRequest(caption="x"), time.time(), state=JobState.FAILED)
    assert record_job(failed, LIMIT) is None
    assert not (results / failed.id / RECORD).exists()
    big = tmp_path / "big.wav"
    big.write_bytes(b"0" * 64)
    job = finished_job(results, GenerationRequest(task_type="cover", src_audio=str(big)), time.time())
    record_job(job, limit_bytes=32, uploads=[big])
    assert Library(results).get(job.id)["request"]["src_audio"] is None
    assert sorted(p.name for p in (results / job.id).iterdir()) == sorted(["take.wav", RECORD])


def test_a_server_file_is_named_by_its_path_never_copied(results: Path, tmp_path: Path):
    """A source that is not the job's upload (an --allowed-path file) stays where it is: the
    results folder, served to whoever sees the results, never gets a copy of it."""
    served = tmp_path / "operator" / "song.wav"
    served.parent.mkdir()
    served.write_bytes(b"RIFF-operator")
    request = GenerationRequest(task_type="cover", src_audio=str(served), reference_audio=str(served))
    job = finished_job(results, request, time.time())
    record_job(job, LIMIT, uploads=[tmp_path / "uploads" / "other.wav"])

    assert sorted(p.name for p in (results / job.id).iterdir()) == sorted(["take.wav", RECORD])
    record = Library(results).get(job.id)
    assert record["request"]["src_audio"] == record["request"]["reference_audio"] == str(served)
    served.unlink()  # restorable only while the file exists
    assert Library(results).get(job.id)["request"]["src_audio"] is None


def test_entries_newest_first_filtered_and_foreign_folders_skipped(results: Path):
    now = time.time()
    older = finished_job(results, GenerationRequest(caption="old", task_type="text2music"), now - 50)
    newer = finished_job(
        results, GenerationRequest(caption="new", task_type="repaint", src_audio="/gone.wav"), now
    )
    for job in (older, newer):
        record_job(job, LIMIT)
    (results / "notes").mkdir()  # not a job folder
    (results / "notes" / RECORD).write_text(json.dumps({"id": "notes"}))
    damaged = results / str(uuid.uuid4())
    damaged.mkdir()
    (damaged / RECORD).write_text("{half")
    library = Library(results)

    assert [r["id"] for r in library.entries()] == [newer.id, older.id]
    assert [r["id"] for r in library.entries(task="repaint")] == [newer.id]
    assert library.entries(model="another") == []
    assert library.tasks() == ["repaint", "text2music"]
    assert library.get("../notes") is None and library.get(damaged.name) is None


def test_rating_persists_and_is_checked(results: Path):
    job = finished_job(results, GenerationRequest(caption="c"), time.time())
    record_job(job, LIMIT)
    library = Library(results)
    assert library.rate(job.id, 4)["rating"] == 4
    assert Library(results).get(job.id)["rating"] == 4  # read back from the file
    with pytest.raises(ValueError):
        library.rate(job.id, 6)
    with pytest.raises(KeyError):
        library.rate(str(uuid.uuid4()), 3)
    assert library.rate(job.id, None)["rating"] is None


def test_delete_removes_the_folder_and_tells_the_queue(results: Path):
    job = finished_job(results, GenerationRequest(caption="c"), time.time())
    record_job(job, LIMIT)
    forgotten = []
    library = Library(results, forget=forgotten.append)
    assert library.delete(job.id)
    assert not (results / job.id).exists() and forgotten == [job.id]
    assert library.entries() == [] and not library.delete(job.id)


def test_a_rating_never_keeps_a_job_past_the_ttl(results: Path):
    """A restarted server's sweep (acestep/jobs/retention.py) keeps a folder younger than the TTL
    and removes an older one, rated or not: rating keeps the record's and the folder's times."""
    ttl = 3600
    finished = time.time() - 600
    job = finished_job(results, GenerationRequest(caption="c"), finished)
    record_job(job, LIMIT)
    folder = results / job.id
    for path in (*folder.iterdir(), folder):  # the files as they were when the job ended
        os.utime(path, (finished, finished))
    Library(results).rate(job.id, 5)
    retention = Retention(results, ttl)

    assert retention.sweep(keep_ids=(), keep_inputs=(), now=finished + ttl - 60) == 0
    assert Library(results).get(job.id)["rating"] == 5
    assert retention.sweep(keep_ids=(), keep_inputs=(), now=finished + ttl + 60) == 1
    assert not folder.exists() and Library(results).entries() == []
