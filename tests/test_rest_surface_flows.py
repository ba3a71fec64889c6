"""Issue 21, flows 1, 4, 5 and 6 and the new output formats: the exact requests real ACE-Step
clients send, through a real server with tiny random checkpoints."""

from __future__ import annotations

import io
import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from _server import Server

from acestep.testing import synthetic_audio

FAST = {"inference_steps": "1", "batch_size": "1", "audio_format": "wav"}


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    srv = Server(upstream_base, tmp_path_factory.mktemp("surface"))
    yield srv
    srv.stop()


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, 48000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def silence(seconds: float) -> bytes:
    return wav_bytes(np.zeros((int(seconds * 48000), 2), dtype=np.float32))


def detail(response) -> str:
    body = response.json()
    return str(body.get("detail") or body.get("error") or body)


def uploads(server: Server) -> list[Path]:
    return sorted((server.workdir / "tmp" / "uploads").glob("*"))


def succeeded(server: Server, task_id: str) -> dict:
    entry = server.wait(task_id)
    assert entry["status"] == 1, entry
    return entry["items"][0]


def test_flow_1_daw_text2music_with_silent_src(server):
    """The DAW uploads a 0.1 s silent src_audio with every text2music job: the job runs, says the
    upload was ignored under the name it was sent as, and the upload goes when the job ends."""
    for _ in range(2):
        response = server.post(
            "/release_task",
            data={"task_type": "text2music", "caption": "calm piano", "audio_duration": "2", **FAST},
            files={"src_audio": ("silence.wav", silence(0.1), "audio/wav")},
        )
        assert response.status_code == 200, response.text
        warnings = response.json()["data"]["warnings"]
        assert any(w.startswith("src_audio ignored") for w in warnings), warnings
        assert not any("ctx_audio" in w for w in warnings), warnings
        item = succeeded(server, response.json()["data"]["task_id"])
        audio, rate = sf.read(io.BytesIO(server.download(item["file"])))
        assert rate == 48000 and audio.shape[0] > 0
    # Jobs run one at a time and a job's uploads go before the next starts: the first one's is gone.
    assert len([p for p in uploads(server) if p.name.startswith("src_audio_")]) <= 1


@pytest.mark.parametrize("task", ["repaint", "extract", "complete"])
def test_flow_1_a_source_task_given_codes_keeps_its_unread_source(server, task):
    """Audio codes win over the source (as upstream): the upload is neither checked nor decoded
    (0.1 s passes), the warning says so, and the request stays valid where the worker checks it
    again (a source task requires its src_audio), so the job runs."""
    codes = "".join(f"<|audio_code_{i}|>" for i in range(10))  # 2 s at 5 Hz
    fields = {"task_type": task, "audio_code_string": codes, "caption": "x", "track_name": "drums", **FAST}
    response = server.post(
        "/release_task", data=fields, files={"src_audio": ("short.wav", silence(0.1), "audio/wav")}
    )
    assert response.status_code == 200, response.text
    warnings = response.json()["data"]["warnings"]
    assert any(w.startswith("src_audio ignored: audio_code_string is set") for w in warnings), warnings
    entry = server.wait(response.json()["data"]["task_id"])
    assert "requires src_audio" not in str(entry), entry
    assert entry["status"] == 1, entry


def test_flow_1_used_upload_is_refused_under_the_name_sent(server):
    """A source the task reads still gets the input bounds, and the message names src_audio."""
    response = server.post(
        "/release_task",
        data={"task_type": "lego", "track_name": "drums", **FAST},
        files={"src_audio": ("short.wav", silence(0.1), "audio/wav")},
    )
    assert response.status_code == 400, response.text
    assert "src_audio" in detail(response) and "ctx_audio" not in detail(response)
    assert not uploads(server)


@pytest.mark.parametrize(
    ("seconds", "window"),
    [(3.0, {}), (0.1, {"repainting_end": "3"})],
    ids=["full_length_silence", "short_silence_padded_to_the_window"],
)
def test_flow_1_first_track_lego(server, seconds, window):
    """First-track lego: a silent source is silence context, not a failed job. The DAW's 0.1 s
    silent source with a window is padded with silence up to repainting_end, as upstream
    outpaints: either way the stem is 3 s."""
    response = server.post(
        "/release_task",
        data={"task_type": "lego", "track_name": "drums", "caption": "drums", "bpm": "100", **window, **FAST},
        files={"src_audio": ("silence.wav", silence(seconds), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    item = succeeded(server, response.json()["data"]["task_id"])
    audio, rate = sf.read(io.BytesIO(server.download(item["file"])))
    assert rate == 48000 and audio.shape[0] == 3 * 48000


def test_flow_4_cover_nofsq(server):
    """cover-nofsq runs: a cover conditioned on the source's raw latents (no FSQ round trip)."""
    response = server.post(
        "/release_task",
        data={"task_type": "cover-nofsq", **FAST},
        files={"src_audio": ("song.wav", wav_bytes(synthetic_audio(2.0, seed=3)), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    succeeded(server, response.json()["data"]["task_id"])


def test_flow_5_free_track_name(server):
    """The wrapper offers names outside the twelve: lego with track_name=piano runs, with a warning."""
    response = server.post(
        "/release_task",
        data={"task_type": "lego", "track_name": "piano", "caption": "piano", **FAST},
        files={"src_audio": ("song.wav", wav_bytes(synthetic_audio(2.0, seed=4)), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    warnings = response.json()["data"]["warnings"]
    assert any("'piano'" in w and "twelve" in w for w in warnings), warnings
    succeeded(server, response.json()["data"]["task_id"])


def test_flow_6_client_path_in_tmp(server):
    """A client on this machine names a file in the temp folder: accepted; a link in the temp
    folder that points outside it is refused (resolved first)."""
    temp = server.workdir / "tmp"  # ACESTEP_TMPDIR: the server's tempfile.gettempdir()
    client_dir = temp / "client"
    client_dir.mkdir(exist_ok=True)
    song = client_dir / "song.wav"
    song.write_bytes(wav_bytes(synthetic_audio(2.0, seed=5)))
    task = server.release(json={"task_type": "cover", "src_audio_path": str(song), **FAST})
    succeeded(server, task)

    # Outside every allowed folder (the machine's temp folder, which holds tmp_path and maybe the
    # venv, is one); confine() refuses on the resolved path alone, so the target need not exist.
    link = client_dir / "link.wav"
    link.unlink(missing_ok=True)
    link.symlink_to("/acestep-outside-every-root/secret.wav")
    response = server.post("/release_task", json={"task_type": "cover", "src_audio_path": str(link), **FAST})
    assert response.status_code == 403, response.text
    assert "src_audio_path" in detail(response)


def test_flow_6_client_path_in_the_machines_temp_folder(upstream_base, tmp_path):
    """The DAW writes its source into the machine's temp folder (TMPDIR as the server found it) and
    names it: accepted and copied at once into the uploads, so swapping the path for a link
    afterwards changes nothing the job reads; the copy goes with the job. A link there that points
    outside is refused."""
    machine_temp = tmp_path / "machine-tmp"
    machine_temp.mkdir()
    (tmp_path / "server").mkdir()
    server = Server(upstream_base, tmp_path / "server", TMPDIR=str(machine_temp))
    try:
        song = machine_temp / "song.wav"
        song.write_bytes(wav_bytes(synthetic_audio(2.0, seed=5)))
        secret = tmp_path / "secret.wav"
        secret.write_bytes(wav_bytes(synthetic_audio(3.0, seed=6)))
        task = server.release(json={"task_type": "cover", "src_audio_path": str(song), **FAST})
        song.unlink()
        song.symlink_to(secret)  # swapped after admission: the job still reads the 2 s copy
        item = succeeded(server, task)
        audio, _ = sf.read(io.BytesIO(server.download(item["file"])))
        assert audio.shape[0] == 2 * 48000
        assert not [p for p in uploads(server) if p.name.startswith("src_audio_path_")]
        response = server.post(
            "/release_task", json={"task_type": "cover", "src_audio_path": str(song), **FAST}
        )
        assert response.status_code == 403 and "src_audio_path" in detail(response), response.text
    finally:
        server.stop()


def test_a_shared_temp_file_is_opened_as_it_is(tmp_path):
    """open_shared: a link in the last component, a FIFO (it would block) and a file outside the
    root are refused; a plain file opens."""
    from acestep.jobs.uploads import UploadError, open_shared

    root = tmp_path
    plain = root / "a.wav"
    plain.write_bytes(b"RIFF")
    open_shared(plain, root, "src_audio_path").close()
    link = root / "link.wav"
    link.symlink_to(plain)
    fifo = root / "pipe.wav"
    os.mkfifo(fifo)
    for path, status in ((link, 403), (fifo, 400), (root / "missing.wav", 400)):
        with pytest.raises(UploadError) as refused:
            open_shared(path, root, "src_audio_path")
        assert refused.value.status == status and "src_audio_path" in refused.value.message
    with pytest.raises(UploadError) as outside:
        open_shared(plain, root / "elsewhere", "src_audio_path")
    assert outside.value.status == 403


def _generate(server: Server, audio_format: str) -> tuple[bytes, str]:
    body = {"caption": "bright synth", "audio_duration": 2, "seed": 7, "use_random_seed": False}
    item = succeeded(server, server.release(json=body | FAST | {"audio_format": audio_format}))
    response = server.get(item["file"])
    assert response.status_code == 200, response.text
    return response.content, response.headers["content-type"]


def test_opus_and_aac_decode_back_and_are_byte_identical(server):
    reference, _ = _generate(server, "wav")
    samples = sf.info(io.BytesIO(reference)).frames

    opus, opus_type = _generate(server, "opus")
    assert opus_type == "audio/ogg" and opus[:4] == b"OggS"
    assert _generate(server, "opus")[0] == opus
    decoded, rate = sf.read(io.BytesIO(opus))
    assert rate == 48000 and decoded.shape == (samples, 2)

    aac, aac_type = _generate(server, "aac")
    assert aac_type == "audio/aac" and aac[0] == 0xFF and aac[1] & 0xF6 == 0xF0  # ADTS sync
    assert _generate(server, "aac")[0] == aac
    with av.open(io.BytesIO(aac)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.codec_context.sample_rate == 48000
        frames = sum(frame.samples for frame in container.decode(stream))
    # ADTS cannot say how many priming and padding samples the encoder added: at most two frames.
    assert samples <= frames <= samples + 2 * 1024


def test_finding_openapi_states_the_route_default_format(server):
    schema = server.get("/openapi.json").json()
    body = schema["paths"]["/release_task"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["audio_format"]["default"] == "mp3"


def test_finding_opus_pages_carry_one_fixed_serial_and_valid_checksums():
    """libsndfile draws a random Ogg serial per file; the rewritten pages carry the fixed one, and
    libogg (which checks every page's CRC on read) still decodes them."""
    from acestep.engine.encoders import OGG_SERIAL, encode_opus

    samples = synthetic_audio(1.5, seed=8).astype(np.float32)
    data = encode_opus(samples, 48000)
    assert data == encode_opus(samples, 48000)
    pages = [i for i in range(len(data) - 3) if data[i : i + 4] == b"OggS"]
    assert len(pages) >= 3  # two header pages and audio
    assert {int.from_bytes(data[i + 14 : i + 18], "little") for i in pages} == {OGG_SERIAL}
    decoded, rate = sf.read(io.BytesIO(data))
    assert rate == 48000 and decoded.shape[0] == samples.shape[0]


def test_flow_edit_over_rest_reads_the_source(server):
    """text2music with flow_edit_morph edits the uploaded source (it is read, not dropped), with the
    sampler and edit fields under upstream's names."""
    data = {
        "task_type": "text2music",
        "caption": "bright brass",
        "flow_edit_morph": "true",
        "flow_edit_source_caption": "soft piano",
        "flow_edit_n_max": "0.5",
        "guidance_variant": "cfg",
        **FAST,
    }
    response = server.post(
        "/release_task",
        data=data,
        files={"src_audio": ("song.wav", wav_bytes(synthetic_audio(2.0, seed=6)), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    warnings = response.json()["data"].get("warnings") or []
    assert not any("ignored" in w for w in warnings), warnings
    item = succeeded(server, response.json()["data"]["task_id"])
    assert item["duration"] == pytest.approx(2.0)  # the source's length (text2music alone: 120 s)
