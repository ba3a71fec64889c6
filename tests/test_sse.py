"""GET /v1/jobs/{task_id}/events on a real server: a job's progress as server-sent events, then its
result; an unknown id is a 404; a client that leaves does not cancel the job."""

from __future__ import annotations

import json

import pytest
from _server import Server

JOB = {"prompt": "sse", "audio_duration": 3, "inference_steps": 3, "batch_size": 1, "audio_format": "wav"}


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    srv = Server(upstream_base, tmp_path_factory.mktemp("sse"))
    yield srv
    srv.stop()


def read_events(lines) -> list[tuple[str, dict]]:
    """(event, data) pairs until the stream ends; comments (keep-alives) are skipped."""
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_events_follow_a_job_to_its_result(server):
    task_id = server.release(json=JOB)
    url = f"/v1/jobs/{task_id}/events"
    assert server.client.get(url).status_code == 401  # behind the key
    with server.client.stream("GET", url, headers=server.auth) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response.iter_lines())
    names = [name for name, _ in events]
    assert names[-1] == "result" and set(names[:-1]) <= {"progress"}, names
    progress = [data["progress"] for name, data in events if name == "progress"]
    assert progress == sorted(progress)  # never lower than before
    assert all(data["task_id"] == task_id for _, data in events)
    assert {data["status"] for name, data in events if name == "progress"} <= {"queued", "running"}
    final = events[-1][1]
    assert final["status"] == 1 and final == server.query(task_id) | {"progress_text": final["progress_text"]}
    item = json.loads(final["result"])[0]
    assert server.download(item["file"])[:4] == b"RIFF"


def test_an_unknown_task_is_a_404_before_any_stream(server):
    response = server.get("/v1/jobs/no-such-task/events")
    assert response.status_code == 404 and "unknown task_id" in response.json()["detail"]


def test_leaving_the_stream_leaves_the_job_running(server):
    task_id = server.release(json=JOB)
    with server.client.stream("GET", f"/v1/jobs/{task_id}/events", headers=server.auth) as response:
        first = next(line for line in response.iter_lines() if line.startswith("event: "))
        assert first == "event: progress"
    # The connection is closed mid-job; the job still runs to its result.
    entry = server.wait(task_id)
    assert entry["status"] == 1, entry
