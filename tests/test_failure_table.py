"""One failure table (acestep/jobs/failures.py) for every route: no module under ``serving/`` or
``jobs/`` states an HTTP status as a number, every cause has a status, the worker-command errors map
to causes in one place, and on a real ``acestep-api`` process the routes answer with the table's
statuses (an unknown adapter and an unknown task id are the same NOT_FOUND)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from _server import Server

import acestep
from acestep.errors import JobError, JobErrorKind
from acestep.jobs.failures import FAILURE_STATUS, RefusalCause, command_refusal, status_of
from acestep.jobs.uploads import UploadError
from acestep.jobs.waits import CommandTimeout
from acestep.lora.catalog import LoraError, LoraNotFound
from acestep.lora.selection import DefaultFull
from acestep.worker.dispatcher import BusyError

PACKAGE = Path(acestep.__file__).parent
# A status written as a number where the table should be asked: raise HTTPException(404, ...),
# JSONResponse(..., status_code=404), UploadError(415, ...), Refusal(400, ...), and the ASGI guards'
# send_refusal(send, 413, ...) or a refusal tuple (408, "...").
LITERAL_STATUS = re.compile(
    r"(HTTPException|UploadError|Refusal)\(\s*\d|status_code\s*=\s*\d"
    r"|send_refusal\(\s*send,\s*\d|(return \(?|= \()[45]\d\d, "
)


def literal_statuses(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if LITERAL_STATUS.search(line)]


def test_the_scan_finds_a_literal_status():
    planted = 'raise HTTPException(404, "x")\nreturn JSONResponse({}, status_code=409)\nUploadError(415, "y")'
    assert len(literal_statuses(planted)) == 3
    guards = 'await send_refusal(send, 413, "big")\nrefusal = (408, "slow")\nreturn 421, ("host")'
    assert len(literal_statuses(guards)) == 3
    assert literal_statuses('raise Refusal(RefusalCause.NOT_FOUND, "x")') == []


@pytest.mark.parametrize("package", ["serving", "jobs"])
def test_no_route_module_states_a_status_as_a_number(package):
    found = {
        str(path.relative_to(PACKAGE)): hits
        for path in sorted((PACKAGE / package).rglob("*.py"))
        if (hits := literal_statuses(path.read_text()))
    }
    assert found == {}, "ask acestep/jobs/failures.py (Refusal / status_of), not a number"


def test_every_cause_has_a_status():
    causes = [*JobErrorKind, *RefusalCause]
    assert set(FAILURE_STATUS) == set(causes)
    assert all(400 <= status_of(cause) <= 599 for cause in causes)
    assert status_of("no such cause") == 500


def test_worker_command_errors_map_to_causes_in_one_place():
    cases = [
        (LoraNotFound("no LoRA named 'x'"), RefusalCause.NOT_FOUND, 404),
        (DefaultFull("the default holds 4 adapters"), RefusalCause.CONFLICT, 409),
        (BusyError("a job is running"), RefusalCause.CONFLICT, 409),
        (CommandTimeout("still running"), RefusalCause.COMMAND_TIMEOUT, 503),
        (JobError(JobErrorKind.CRASH, "worker died"), RefusalCause.COMMAND_TIMEOUT, 503),
        (LoraError("not a LoRA"), JobErrorKind.INPUT, 400),
        (ValueError("name must be an adapter name"), JobErrorKind.INPUT, 400),
    ]
    for exc, cause, status in cases:
        refusal = command_refusal(exc)
        assert (refusal.cause, refusal.status, refusal.reason) == (cause, status, str(exc)), exc
        assert refusal.headers is None  # nobody knows when the running job ends


def test_an_upload_error_is_a_refusal_with_its_cause():
    error = UploadError(RefusalCause.UNSUPPORTED_MEDIA, "upload is not audio")
    assert (error.status, error.message, str(error)) == (415, "upload is not audio", "upload is not audio")


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("failure_table")
    (workdir / "loras").mkdir()
    srv = Server(upstream_base, workdir, ACESTEP_LORA_DIR=str(workdir / "loras"))
    yield srv
    srv.stop()


def test_routes_answer_with_the_table(server):
    not_found = FAILURE_STATUS[RefusalCause.NOT_FOUND]
    adapter = server.post("/v1/lora/load", json={"name": "nosuch"})
    task = server.post("/v1/cancel", json={"task_id": "nosuch"})
    assert adapter.status_code == task.status_code == not_found == 404, (adapter.text, task.text)
    assert "no LoRA named 'nosuch'" in adapter.json()["detail"]
    assert task.json()["detail"] == "unknown task_id 'nosuch'"

    outside = server.get("/v1/audio", params={"path": "/etc/passwd"})
    assert outside.status_code == FAILURE_STATUS[RefusalCause.FORBIDDEN] == 403
    not_audio = server.post(
        "/lego",
        data={"track_type": "drums", "bpm": "120"},
        files={"audio_file": ("beat.wav", b"definitely not audio", "audio/wav")},
    )
    assert not_audio.status_code == FAILURE_STATUS[RefusalCause.UNSUPPORTED_MEDIA] == 415, not_audio.text
    assert not_audio.json()["detail"].startswith("upload is not audio")
    no_default = server.post("/v1/lora/scale", json={"scale": 0.5})
    assert no_default.status_code == FAILURE_STATUS[RefusalCause.CONFLICT] == 409
    wrong = server.post("/v1/lora/toggle", json={"use_lora": "maybe"})
    assert wrong.status_code == FAILURE_STATUS[JobErrorKind.INPUT] == 400

    # The key check, in the route (upstream's body token) and in front of it (the header).
    url = f"http://127.0.0.1:{server.port}"
    body_token = httpx.post(f"{url}/release_task", json={"prompt": "x", "ai_token": "wrong"}, trust_env=False)
    header = httpx.get(f"{url}/v1/memory", headers={"Authorization": "Bearer wrong"}, trust_env=False)
    unauthorized = FAILURE_STATUS[RefusalCause.UNAUTHORIZED]
    assert body_token.status_code == header.status_code == unauthorized == 401
    assert body_token.json()["detail"] == "Invalid ai_token"
