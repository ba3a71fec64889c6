"""Real weights, first try: a missing model or folder names the exact command that fetches it, and
a task the DiT variant cannot run is refused before any weight is read (CLI and servers).

"Before any weight is read" is shown with a root whose DiT weights are garbage: loading them fails
with ``cannot read``, so a refusal that names the task can only come from the check before loading.
"""

from __future__ import annotations

import io
import shlex
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from _hub import LocalHub
from _server import Server

from acestep import GenerationRequest, cli
from acestep.checkpoints import CheckpointError, resolve
from acestep.checkpoints.lm_folders import LmNotAvailable, find_lm_folder
from acestep.checkpoints.registry import MAIN_REPO
from acestep.checkpoints.task_support import TaskNotSupported, require_task
from acestep.cli import download_main
from acestep.jobs.queue import LocalJobQueue
from acestep.memory.gpus import StaticSource
from acestep.memory.manager import MemoryManager
from acestep.testing import synthetic_audio
from acestep.worker.runner import EngineSpec
from acestep.worker.supervisor import Supervisor

TURBO = "acestep-v15-turbo"
BASE = "acestep-v15-base"


def resolve_error(path: Path, dit: str | None = None) -> str:
    with pytest.raises(CheckpointError) as error:
        resolve(path, dit)
    return str(error.value)


@pytest.fixture
def root(upstream_base: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoints"
    shutil.copytree(upstream_base, copy)
    return copy


@pytest.fixture
def broken_turbo(upstream_turbo: Path, tmp_path: Path) -> Path:
    """A turbo root whose DiT weights cannot be read."""
    copy = tmp_path / "turbo checkpoints"  # a space: the named commands must quote the path
    shutil.copytree(upstream_turbo, copy)
    (copy / TURBO / "model.safetensors").write_bytes(b"not safetensors")
    return copy


def test_the_named_command_fetches_the_missing_folder(root: Path, upstream_base: Path, monkeypatch):
    import huggingface_hub

    shutil.rmtree(root / "vae")
    message = resolve_error(root, BASE)
    assert message.endswith(f"download it with: acestep-download --model vae --dir {root}")
    hub = LocalHub({MAIN_REPO: upstream_base})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    command = shlex.split(message.split("download it with: ")[1])
    assert download_main(command[1:]) == 0
    assert [call["allow_patterns"] for call in hub.calls] == [["vae/*"]]
    assert resolve(root, BASE).vae_dir == root / "vae"


def test_each_missing_piece_names_its_download(root: Path, tmp_path: Path):
    nowhere = tmp_path / "nowhere"
    assert resolve_error(nowhere).endswith(f"download it with: acestep-download --dir {nowhere}")
    assert resolve_error(nowhere / "acestep-v15-sft").endswith(
        f"download it with: acestep-download --model acestep-v15-sft --dir {nowhere}"
    )
    assert f"acestep-download --model acestep-v15-xl-base --dir {root}" in resolve_error(
        root, "acestep-v15-xl-base"
    )
    assert "acestep-download" not in resolve_error(root, "acestep-v15-my-own")  # nothing to fetch
    (root / BASE / "silence_latent.pt").unlink()  # an interrupted download: the same command resumes
    assert resolve_error(root, BASE).endswith(f"acestep-download --model {BASE} --dir {root}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_error(empty).endswith(f"download it with: acestep-download --dir {empty}")


def test_a_missing_lm_names_its_own_download(root: Path):
    with pytest.raises(
        LmNotAvailable, match=f"download it with: acestep-download --model acestep-5Hz-lm-4B --dir {root}$"
    ):
        find_lm_folder(root, "acestep-5Hz-lm-4B", env={})
    with pytest.raises(
        LmNotAvailable, match="download one with: acestep-download --model acestep-5Hz-lm-1.7B"
    ):
        find_lm_folder(root, "acestep-5Hz-lm-9B", env={})


def test_generate_refuses_lego_on_turbo_before_loading(
    broken_turbo: Path, source_wav: Path, tmp_path, capsys
):
    out = tmp_path / "out"
    base = ["generate", "--checkpoint", str(broken_turbo), "--device", "cpu", "--output-dir", str(out)]
    lego = ["--task", "lego", "--track-name", "vocals", "--src-audio", str(source_wav), "--caption", "x"]
    assert cli.main(base + lego) == 2
    err = capsys.readouterr().err
    assert f"task 'lego' needs a base or SFT model; {TURBO} is a turbo model" in err
    fix = f"acestep-download --model {BASE} --dir {shlex.quote(str(broken_turbo))}"
    assert fix in err and f"then load it with --dit {BASE}" in err
    assert "cannot read" not in err and not out.exists()
    # The control: a task turbo can run goes on to load the weights, and fails there.
    assert cli.main(base + ["--caption", "x", "--duration", "4"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_a_fitting_model_in_the_root_is_named_instead(upstream_turbo: Path, upstream_base: Path, tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(upstream_turbo, root)
    with pytest.raises(TaskNotSupported, match="download acestep-v15-base with"):
        require_task(resolve(root, TURBO), "extract")
    shutil.copytree(upstream_base / BASE, root / BASE)
    with pytest.raises(TaskNotSupported, match=f"{BASE} in {root} can: load it with --dit {BASE}"):
        require_task(resolve(root, TURBO), "extract")
    require_task(resolve(root, TURBO), "repaint")  # turbo's own tasks pass
    # An XL turbo is pointed at the XL base (the 2B base beside it is another size).
    (root / TURBO).rename(root / "acestep-v15-xl-turbo")
    with pytest.raises(TaskNotSupported, match="acestep-download --model acestep-v15-xl-base"):
        require_task(resolve(root, "acestep-v15-xl-turbo"), "complete")


def test_the_job_queue_refuses_before_the_worker_loads(broken_turbo: Path, source_wav: Path, tmp_path):
    """The queue behind REST, the UI and MCP: nothing is queued, nothing loads."""
    manager = Supervisor(MemoryManager(source=StaticSource([]), env={"ACESTEP_KEEP_ALIVE": "-1"}))
    manager.start(EngineSpec(str(broken_turbo), device="cpu"), in_process=True)
    queue = LocalJobQueue(manager, tmp_path / "results", checkpoint=resolve(broken_turbo))
    try:
        lego = GenerationRequest(task_type="lego", track_name="drums", src_audio=str(source_wav))
        with pytest.raises(TaskNotSupported, match="'lego' needs a base or SFT model"):
            queue.submit(lego)
        assert manager.dispatcher.queue_depth() == 0 and manager.dispatcher.runner.state == "unloaded"
        assert queue.stats()["jobs"]["total"] == 0
    finally:
        queue.close()
        manager.close()


def test_the_lego_route_on_a_turbo_server_is_a_400(broken_turbo: Path, tmp_path: Path):
    """A real ``acestep-api`` (no preload): refused with the reason, and the model never loads."""
    wav = io.BytesIO()
    sf.write(wav, synthetic_audio(6.0, seed=1), 48000, format="WAV")
    server = Server(broken_turbo, tmp_path, dit=TURBO)
    try:
        upload = {"audio_file": ("a.wav", wav.getvalue(), "audio/wav")}
        response = server.post("/lego", data={"track_type": "vocals", "bpm": "120"}, files=upload)
        assert response.status_code == 400, response.text
        assert "'lego' needs a base or SFT model" in response.text, response.text
        assert f"ACESTEP_CONFIG_PATH={BASE}" in response.text
        assert server.get("/v1/memory").json()["data"]["worker"]["state"] == "unloaded"
    finally:
        server.stop()
