"""Issue 19, items 2, 4 and 10: what a request may cost before its key is checked, and what the log
and the connection look like afterwards. A real ``acestep-api`` with a key, on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from _raw_http import connect, head, held_for, read_response
from _server import KEY, Server

DEADLINES = {"ACESTEP_HEADER_TIMEOUT": "2", "ACESTEP_BODY_IDLE_TIMEOUT": "2", "ACESTEP_BODY_TIMEOUT": "6"}
BIG_JSON = 190 * 2**20


@pytest.fixture(scope="module")
def api(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("api_security")
    server = Server(upstream_base, workdir, ACESTEP_MAX_UPLOADS="2", **DEADLINES)
    yield server
    server.stop()


def ask(port: int, request: bytes, timeout: float = 10) -> tuple[int | None, bytes]:
    """Send only ``request`` (headers, perhaps a first piece of body) and read the answer."""
    with connect(port, timeout=timeout) as sock:
        sock.sendall(request)
        return read_response(sock)


@pytest.mark.parametrize(
    "path", ["/release_task", "/query_result", "/lego", "/format_input", "/create_random_sample"]
)
def test_a_large_body_without_a_key_is_refused_before_it_is_read(api, path):
    """190 MiB announced, none sent: the answer comes at once, a 401 (the key is missing), where
    the server used to wait for the whole body and then answer 413."""
    started = time.monotonic()
    headers = {"Content-Type": "application/json", "Content-Length": BIG_JSON}
    status, data = ask(api.port, head("POST", path, api.port, headers))
    assert status == 401, data[:300]
    assert b"Authorization header" in data
    assert time.monotonic() - started < 10


def test_a_wrong_header_key_is_refused_before_the_upload(api):
    headers = {"Authorization": "Bearer wrong", "Content-Type": "multipart/form-data; boundary=x",
               "Content-Length": 150 * 2**20}  # fmt: skip
    status, data = ask(api.port, head("POST", "/release_task", api.port, headers))
    assert status == 401, data[:300]


def test_a_non_multipart_body_over_its_limit_is_refused_from_its_length(api):
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
        "Content-Length": 5 * 2**20,
    }
    status, data = ask(api.port, head("POST", "/release_task", api.port, headers))
    assert status == 413, data[:300]
    assert b"4 MiB" in data


def test_the_body_token_still_works_for_small_bodies(api):
    """Upstream's ``ai_token`` in the body: accepted, and a wrong one refused."""
    ok = api.client.post("/query_result", json={"task_id_list": [], "ai_token": KEY})
    assert ok.status_code == 200, ok.text
    wrong = api.client.post("/query_result", json={"task_id_list": [], "ai_token": "nope"})
    assert wrong.status_code == 401


def test_stalled_headers_are_dropped(api):
    with connect(api.port) as sock:
        sock.sendall(b"POST /release_task HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        held = held_for(sock, 30)
    assert held < 15, f"a connection with unfinished headers was held {held:.1f} s"


def test_an_idle_connection_is_dropped(api):
    with connect(api.port) as sock:
        held = held_for(sock, 30)
    assert held < 15, f"a silent connection was held {held:.1f} s"


def spooled_files(server: Server) -> list:
    return [p for p in (server.workdir / "tmp").iterdir() if p.is_file()]


def stalled_upload(server: Server, sent: int):
    """A multipart upload that announces 50 MiB, sends ``sent`` bytes of file, then stalls."""
    boundary = "stall"
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="src_audio"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": f"multipart/form-data; boundary={boundary}",
               "Content-Length": 50 * 2**20}  # fmt: skip
    sock = connect(server.port)
    sock.sendall(head("POST", "/release_task", server.port, headers) + preamble + b"RIFF" + b"\0" * sent)
    return sock


def test_a_stalled_upload_is_dropped_and_its_spool_removed(api):
    before = set(spooled_files(api))
    with stalled_upload(api, 3 * 2**20) as sock:
        time.sleep(1.0)
        spooling = [p for p in spooled_files(api) if p not in before]
        status, data = read_response(sock)  # the server answers when the body stalls
        held = held_for(sock, 30)
    assert status == 408, data[:300]
    assert b"ACESTEP_BODY_IDLE_TIMEOUT" in data
    assert held < 5
    assert [p for p in spooled_files(api) if p not in before] == [], f"left behind (spooled: {spooling})"


def test_concurrent_uploads_are_bounded(api):
    """Two uploads arriving at once (ACESTEP_MAX_UPLOADS=2): a third, complete, is not read until one
    of them ends; then it is answered."""
    boundary = "third"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="src_audio"; filename="a.wav"\r\n\r\n'
        f"not audio at all\r\n--{boundary}--\r\n"
    ).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": f"multipart/form-data; boundary={boundary}",
               "Content-Length": len(body)}  # fmt: skip
    stalled = [stalled_upload(api, 2**10) for _ in range(2)]
    try:
        time.sleep(0.5)
        with connect(api.port) as third:
            third.sendall(head("POST", "/release_task", api.port, headers) + body)
            third.settimeout(1.0)
            status, _ = read_response(third)
            assert status is None, "the third upload was read while two were arriving"
            stalled.pop().close()  # one ends: its place frees
            third.settimeout(30)
            status, data = read_response(third)
        assert status == 415, data[:300]  # read and judged once a place was free
    finally:
        for sock in stalled:
            sock.close()


def test_a_client_that_leaves_mid_body_is_a_quiet_close(api):
    size = api.log.stat().st_size
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", "Content-Length": 1000}
    for _ in range(3):
        with connect(api.port) as sock:
            sock.sendall(head("POST", "/release_task", api.port, headers) + b'{"caption": "')
    time.sleep(1.0)
    assert api.get("/health").status_code == 200
    logged = api.log.read_bytes()[size:].decode(errors="replace")
    assert "Traceback" not in logged and "ClientDisconnect" not in logged, logged[-3000:]
    assert len(logged) < 2000, f"{len(logged)} bytes logged for three disconnects"


def test_an_unexpected_error_is_logged_once_without_secrets_and_keeps_the_connection(api):
    """The uploads folder replaced by a file: saving an upload fails in a way no route expects."""
    uploads = api.workdir / "tmp" / "uploads"
    moved = uploads.with_name("uploads.moved")
    uploads.rename(moved)
    uploads.write_bytes(b"not a folder")
    size = api.log.stat().st_size
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{api.port}", trust_env=False, timeout=60) as client:
            wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\0" * 64
            failed = client.post("/release_task", headers=api.auth, files={"src_audio": ("a.wav", wav)},
                                 data={"task_type": "repaint"})  # fmt: skip
            assert failed.status_code == 500, failed.text
            assert failed.headers.get("connection") != "close"
            again = client.get("/health")
            assert again.status_code == 200
            assert again.extensions["network_stream"] is failed.extensions["network_stream"], (
                "connection dropped"
            )
    finally:
        uploads.unlink()
        moved.rename(uploads)
    logged = api.log.read_bytes()[size:].decode(errors="replace")
    assert logged.count("Traceback") == 1, logged[-4000:]
    assert KEY not in logged
    assert "api_key" not in logged  # no local variables (loguru's diagnose) in the traceback


def test_a_short_key_is_warned_about(api):
    assert len(KEY) < 16
    assert "use at least 16" in api.log.read_text()


@pytest.fixture(scope="module")
def login_ui(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ui_throttle")
    server = Server(upstream_base, workdir, ui=True, ACESTEP_AUTH_FAILURES="3")
    yield server
    server.stop()


def test_wrong_keys_are_throttled(login_ui):
    wrong = {"Authorization": "Bearer wrong"}
    statuses = [login_ui.get("/v1/stats", headers=wrong).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429], statuses
    limited = login_ui.get("/v1/stats", headers=wrong)
    assert limited.status_code == 429
    assert 0 < int(limited.headers["retry-after"]) <= 60
    assert httpx.get(f"http://127.0.0.1:{login_ui.port}/health", trust_env=False).status_code == 429
    # A client with the right key, from the same address (a proxy's, say), is not locked out.
    assert login_ui.get("/v1/stats").status_code == 200


def test_ui_logins_are_throttled(upstream_base, tmp_path):
    server = Server(upstream_base, tmp_path, ui=True, ACESTEP_AUTH_FAILURES="3")
    try:
        attempts = [
            server.client.post("/login", data={"username": "u", "password": "wrong"}).status_code
            for _ in range(4)
        ]
        assert attempts == [400, 400, 400, 429], attempts
    finally:
        server.stop()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_the_worker_process_never_holds_the_key(api):
    assert api.post("/v1/load").status_code == 200  # the worker process runs the model
    [worker] = children(api.proc.pid)
    environment = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    assert not any(entry.startswith(b"ACESTEP_API_KEY=") for entry in environment)
    assert b"LOGURU_DIAGNOSE=NO" in environment


def closed_while_trickling(sock, seconds: float) -> bool:
    """Whether the server closes ``sock`` while the client keeps sending a byte every 0.25 s."""
    sock.settimeout(0.25)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"x")
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


@pytest.mark.parametrize("method, path", [("POST", "/v1/stats"), ("GET", "/health")])
def test_a_body_nobody_reads_does_not_hold_the_connection(api, method, path):
    """Answered before its body was read (405, or a GET that ignores it): a client trickling the rest
    used to keep the socket forever, each byte putting off uvicorn's keep-alive timer."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", "Content-Length": 2**20}
    with connect(api.port) as sock:
        sock.sendall(head(method, path, api.port, headers) + b"{")
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 ")
        assert closed_while_trickling(sock, 10), "the connection stayed open"


@pytest.mark.parametrize(
    "path, content_type",
    [("/query_result", "multipart/form-data; boundary=x"), ("/release_task", "text/plain; x=multipart/")],
)
def test_an_uploads_size_is_only_for_real_uploads_to_upload_routes(api, path, content_type):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": content_type, "Content-Length": 50 * 2**20}
    status, data = ask(api.port, head("POST", path, api.port, headers))
    assert status == 413, data[:300]
