"""The API process checks uploads without importing torch: it reads headers in a child process
and never loads a model (the GPU worker is a process of its own)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests._server import Server


def wav_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((int(48000 * seconds), 2), dtype="float32"), 48000, format="WAV")
    return buffer.getvalue()


def test_the_upload_check_imports_no_torch_in_a_fresh_interpreter(tmp_path: Path) -> None:
    wav = tmp_path / "song.wav"
    wav.write_bytes(wav_bytes(3.0))
    code = textwrap.dedent(
        f"""
        import sys
        import acestep.serving.app  # every route, guard and the upload code
        from acestep.serving.inputs import check_audio
        seconds = check_audio(__import__("pathlib").Path({str(wav)!r}), "src_audio")
        print(seconds, "torch" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3.0", "False"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")
def test_a_served_upload_loads_no_torch_into_the_api_process(upstream_base: Path, tmp_path: Path) -> None:
    server = Server(upstream_base, tmp_path, ACESTEP_PRELOAD="false")
    try:
        response = server.post(
            "/release_task",
            data={"task_type": "lego", "track_name": "drums", "inference_steps": "1"},
            files={"ctx_audio": ("song.wav", wav_bytes(11.0), "audio/wav")},
        )
        assert response.status_code == 200, response.text
        server.wait(response.json()["data"]["task_id"])
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    finally:
        server.stop()
    assert "libtorch" not in maps
    assert "libc10" not in maps
