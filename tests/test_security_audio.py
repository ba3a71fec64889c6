"""Audio decompression bombs and a full disk, through a real server and its worker process.

A few hundred KB of FLAC can claim 8 channels at 384 kHz, or minutes at 192 kHz: each is refused
from its header before it is queued, on every way in (multipart upload, a server path, /lego, MCP),
and the worker decodes the largest accepted file in blocks that keep two channels. A full output
or uploads disk is a clear "no space left in <dir>" with nothing half written left behind.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from _server import Server
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from acestep.engine.audio_limits import DEFAULT_MAX_DECODED_MB, MAX_DECODED_ENV, MIB
from acestep.jobs.library import RECORD

RATE_NEEDLE = "the limit is 192000 Hz"
CHANNELS_NEEDLE = "the limit is 8"
DECODED_NEEDLE = f"the limit is {DEFAULT_MAX_DECODED_MB} MB ({MAX_DECODED_ENV})"


def write_audio(path: Path, rate: int, channels: int, seconds: float, fmt: str = "FLAC") -> Path:
    """Silence, written a second at a time: FLAC stores it in a few bytes per block, which is what
    makes a bomb small."""
    block = np.zeros((rate, channels), dtype=np.float32)
    whole, rest = divmod(int(seconds * rate), rate)
    with sf.SoundFile(str(path), "w", rate, channels, format=fmt, subtype="PCM_16") as handle:
        for _ in range(whole):
            handle.write(block)
        handle.write(block[:rest])
    return path


def speech_wav(seconds: float = 3.0) -> bytes:
    """An ordinary 48 kHz stereo 16-bit WAV (not silent), 192 KB a second."""
    t = np.arange(int(seconds * 48000)) / 48000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([tone, tone], axis=1), 48000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Each crafted file with the text its refusal must carry."""
    folder = tmp_path_factory.mktemp("bombs")
    return {
        # 8 channels at 384 kHz: decoded whole, about 490 MB from 16 KB.
        "rate_flac": (write_audio(folder / "rate.flac", 384000, 8, 5.0), RATE_NEEDLE),
        "rate_wav": (write_audio(folder / "rate.wav", 384000, 2, 1.5, fmt="WAV"), RATE_NEEDLE),
        "channels_wav": (write_audio(folder / "channels.wav", 48000, 12, 1.5, fmt="WAV"), CHANNELS_NEEDLE),
        # Within rate, channels and duration, but 360 s at 192 kHz decodes to 527 MiB.
        "decoded_flac": (write_audio(folder / "decoded.flac", 192000, 2, 360.0), DECODED_NEEDLE),
    }


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("audio_bombs")
    (workdir / "inputs").mkdir()
    srv = Server(upstream_base, workdir, ACESTEP_ALLOWED_PATHS=str(workdir / "inputs"))
    yield srv
    srv.stop()


def detail(response: httpx.Response) -> str:
    return response.json().get("detail", "")


def job_count(server: Server) -> int:
    jobs = server.get("/v1/stats").json()["data"]["jobs"]
    return sum(jobs[state] for state in ("queued", "running", "succeeded", "failed"))


def assert_still_serving(server: Server) -> None:
    assert server.client.get("/health").status_code == 200
    assert not list((server.workdir / "tmp" / "uploads").glob("*"))  # nothing left behind


KINDS = ["rate_flac", "rate_wav", "channels_wav", "decoded_flac"]


@pytest.mark.parametrize("kind", KINDS)
def test_bomb_uploads_are_refused_before_queueing(server, bombs, kind):
    path, needle = bombs[kind]
    jobs = job_count(server)
    for route, data, field in (
        ("/release_task", {"task_type": "lego", "track_name": "drums"}, "ctx_audio"),
        ("/lego", {"track_type": "drums", "bpm": "100"}, "audio_file"),
    ):
        response = server.post(
            route, data=data, files={field: (path.name, path.read_bytes(), "application/octet-stream")}
        )
        assert response.status_code == 400, (route, response.text)
        assert needle in detail(response) and field in detail(response), (route, response.text)
    assert_still_serving(server)
    assert job_count(server) == jobs  # nothing was queued


@pytest.mark.parametrize("kind", KINDS)
def test_bomb_server_paths_are_refused_before_queueing(server, bombs, kind):
    path, needle = bombs[kind]
    inside = server.workdir / "inputs" / path.name
    shutil.copyfile(path, inside)
    jobs = job_count(server)
    # A lego reads its source, and every task reads a reference (text2music: a lego needs a source).
    for field, task in (("src_audio_path", "lego"), ("reference_audio_path", "text2music")):
        body = {"task_type": task, "track_name": "drums", field: str(inside)}
        response = server.post("/release_task", json=body)
        assert response.status_code == 400, (field, response.text)
        assert needle in detail(response) and field in detail(response), (field, response.text)
    assert_still_serving(server)
    assert job_count(server) == jobs


def test_mcp_lego_stem_refuses_bombs(server, bombs):
    url = f"http://127.0.0.1:{server.port}/mcp/"

    async def run() -> list[tuple[str, str, bool, str, str]]:
        outcomes = []
        async with (
            httpx.AsyncClient(headers=server.auth, timeout=600, trust_env=False) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            for kind in ("rate_flac", "channels_wav", "decoded_flac"):
                path, needle = bombs[kind]
                inside = server.workdir / "inputs" / path.name
                shutil.copyfile(path, inside)
                for source in (
                    {"audio_base64": base64.b64encode(path.read_bytes()).decode()},
                    {"audio_path": str(inside)},
                ):
                    result = await session.call_tool(
                        "lego_stem", {"track_type": "drums", "bpm": 100, **source}
                    )
                    outcomes.append(
                        (kind, next(iter(source)), result.isError, result.content[0].text, needle)
                    )
        return outcomes

    for kind, source, is_error, text, needle in asyncio.run(asyncio.wait_for(run(), 600)):
        assert is_error and needle in text, (kind, source, text)
    assert_still_serving(server)


def worker_pid(server: Server) -> int:
    """The GPU worker: the server's child running ``acestep.worker.child``."""
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if b"acestep.worker.child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
    raise AssertionError("no worker process")


def vm_hwm_mib(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_largest_accepted_upload_is_decoded_in_bounded_memory(server, tmp_path):
    """8 channels at 192 kHz for 349 s is just inside every bound (511 MiB as two float32
    channels; 2 GiB had all eight been decoded). Silent, so the job ends right after decoding:
    the worker's peak RSS then measures the decode alone."""
    largest = write_audio(tmp_path / "largest.flac", 192000, 8, 349.0)
    warmup = server.post(
        "/release_task", json={"caption": "warm up", "audio_duration": 2, "inference_steps": 1}
    )
    assert server.wait(warmup.json()["data"]["task_id"])["status"] == 1  # the model is loaded
    pid = worker_pid(server)
    before = vm_hwm_mib(pid)
    # As a reference: a silent source is silence context since issue 21 and would run the DiT over
    # 349 s; a silent reference is still decoded, then refused.
    response = server.post(
        "/release_task",
        data={"caption": "x", "audio_duration": "2", "inference_steps": "1"},
        files={"ref_audio": (largest.name, largest.read_bytes(), "audio/flac")},
    )
    assert response.status_code == 200, response.text  # accepted: within every bound
    entry = server.wait(response.json()["data"]["task_id"])
    assert entry["status"] == 2 and "silent" in entry["error"], entry  # decoded, then refused
    after = vm_hwm_mib(pid)
    print(
        f"\nworker VmHWM: {before:.0f} MiB before, {after:.0f} MiB after decoding {largest.stat().st_size} "
        f"bytes of FLAC (8 ch, 192 kHz, 349 s): +{after - before:.0f} MiB"
    )
    # Decoding all eight channels, then a transposed copy (the old loader), needs over 4 GiB.
    assert after - before < 2 * DEFAULT_MAX_DECODED_MB, (before, after)
    assert_still_serving(server)


# --- A full disk: tmpfs mounts of 2 MiB as the uploads and the output folders ---------------


def mount_tmpfs(folder: Path) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def small_disks(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("disk_full")
    uploads, outputs = workdir / "tmp" / "uploads", workdir / "outputs"
    mounted = []
    try:
        for folder in (uploads, outputs):
            folder.mkdir(parents=True)
            mount_tmpfs(folder)
            mounted.append(folder)
        srv = Server(upstream_base, workdir, ACESTEP_OUTPUT_DIR=str(outputs))
        try:
            yield srv, uploads, outputs
        finally:
            srv.stop()
    finally:
        for folder in mounted:
            unmount(folder)


class Filled:
    """Fills ``folder``'s filesystem to ``leave`` bytes free while in use; removed afterwards."""

    def __init__(self, folder: Path, leave: int = 64 * 1024):
        self.filler = folder / "filler.bin"
        self.leave = leave

    def __enter__(self) -> Filled:
        with self.filler.open("wb", buffering=0) as handle:  # unbuffered: the failing write is the last
            try:
                while handle.write(b"\0" * MIB):
                    pass
            except OSError:  # full
                pass
        size = self.filler.stat().st_size
        os.truncate(self.filler, max(0, size - self.leave))
        return self

    def __exit__(self, *exc) -> None:
        self.filler.unlink(missing_ok=True)


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "filler.bin")


def test_full_uploads_disk_is_a_507_with_nothing_left(small_disks):
    server, uploads, _ = small_disks
    fields = {"task_type": "lego", "track_name": "drums"}
    upload = {"ctx_audio": ("song.wav", speech_wav(3.0), "audio/wav")}  # 576 KB
    with Filled(uploads):
        response = server.post("/release_task", data=fields, files=upload)
        assert response.status_code == 507, response.text
        assert f"no space left in {uploads}" in detail(response), response.text
        assert files_in(uploads) == []  # the partial upload was removed
        lego = server.post(
            "/lego", data={"track_type": "drums", "bpm": "100"}, files={"audio_file": upload["ctx_audio"]}
        )
        assert lego.status_code == 507 and f"no space left in {uploads}" in detail(lego), lego.text
        assert files_in(uploads) == []
    assert server.client.get("/health").status_code == 200
    # With space again, the same upload is accepted.
    response = server.post("/release_task", data=fields | {"inference_steps": "1"}, files=upload)
    assert response.status_code == 200, response.text
    server.wait(response.json()["data"]["task_id"])


def test_full_output_disk_fails_the_job_clearly_and_later_jobs_work(small_disks):
    server, _, outputs = small_disks
    body = {
        "caption": "disk full",
        "audio_duration": 3,
        "inference_steps": 1,
        "seed": 5,
        "audio_format": "wav",
        "batch_size": 1,  # one 1.1 MB float WAV fits the 2 MiB disk; the REST default of two would not
    }
    earlier = files_in(outputs)  # other tests' results
    with Filled(outputs):
        entry = server.wait(server.release(json=body))
        assert entry["status"] == 2, entry
        assert f"no space left in {outputs}" in entry["error"], entry
        assert files_in(outputs) == earlier  # no partial output left behind
    entry = server.wait(server.release(json=body))  # the same request, with space again
    assert entry["status"] == 1, entry
    added = [path for path in files_in(outputs) if path not in earlier]
    assert sorted(path.suffix for path in added if path.name != RECORD) == [".wav"]  # and its record
