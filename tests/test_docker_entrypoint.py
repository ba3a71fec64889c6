"""docker/docker-entrypoint.sh run directly on this machine (no Docker engine needed): the target's
settings, the folders, the first-run download step and the server it starts, checked end to end
with docker/check_job.py against a real server on 127.0.0.1. docker/smoke.sh runs the same in an image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from _server import free_port, stop_process, wait_for_health

from acestep.jobs.library import INPUT_FIELDS

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker" / "docker-entrypoint.sh"
CHECK_JOB = ROOT / "docker" / "check_job.py"
KEY = "entrypoint-key"


def entry_env(tmp_path: Path, target: str, checkpoints: Path, **extra: str) -> dict[str, str]:
    """The image's environment, pointed at temporary folders, with this venv's commands on PATH."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ACESTEP_", "HF_", "MAX_CUDA"))}
    return keep | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "ACESTEP_TARGET_ENV": str(ROOT / "docker" / "env" / f"{target}.env"),
        "ACESTEP_PROJECT_ROOT": str(tmp_path / "app"),
        "ACESTEP_CHECKPOINTS_DIR": str(checkpoints),
        "ACESTEP_OUTPUT_DIR": str(tmp_path / "app" / "outputs"),
        "ACESTEP_DEVICE": "cpu",  # the env files say cuda; what is set already wins
        "ACESTEP_API_KEY": KEY,
        "HF_HUB_OFFLINE": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        **extra,
    }


class Entrypoint:
    def __init__(self, env: dict[str, str], log: Path, *args: str):
        self.log = log
        self.proc = subprocess.Popen(
            ["bash", ENTRYPOINT, *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
        )

    def wait_port(self, port: int) -> None:
        wait_for_health(self.proc, port, self.log)

    def stop(self) -> None:
        stop_process(self.proc)


def check_job(port: int, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, CHECK_JOB, "--url", f"http://127.0.0.1:{port}", "--key", KEY, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"NO_PROXY": "127.0.0.1,localhost"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout)


def test_t4_serves_the_api_and_frees_after_each_job(tmp_path, upstream_base):
    api = free_port()
    env = entry_env(
        tmp_path, "t4", upstream_base, ACESTEP_API_PORT=str(api), ACESTEP_UI_PORT=str(free_port())
    )
    server = Entrypoint(env, tmp_path / "server.log")
    try:
        server.wait_port(api)
        summary = check_job(api, "--task", "lego", "--seconds", "5", "--expect-free-after-job")
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "all models are in" in log  # the download step ran and found everything
    assert (
        summary["health"]["loaded_model"] == "acestep-v15-base" and not summary["health"]["llm_initialized"]
    )
    after = summary["memory_after_job"]
    assert after["worker"]["pid"] is None and after["keep_alive"]["default_seconds"] == 0
    assert after["limits"]["max_batch"] == 1 and after["limits"]["offload_dit_to_cpu"]
    kept_inputs = set(INPUT_FIELDS.values())  # the library's copy of the uploaded source
    stems = [p for p in (tmp_path / "app" / "outputs").rglob("*.wav") if p.stem not in kept_inputs]
    assert len(stems) == 1 and stems[0].stat().st_size > 0
    for folder in ("lora_output", "training_data", "cache/huggingface", "cache/triton", "cache/tmp"):
        assert (tmp_path / "app" / folder).is_dir(), folder


def test_ui_target_serves_ui_and_api_on_two_ports(tmp_path, upstream_turbo):
    ui, api = free_port(), free_port()
    env = entry_env(
        tmp_path,
        "4090",
        upstream_turbo,
        ACESTEP_API_PORT=str(api),
        ACESTEP_UI_PORT=str(ui),
        ACESTEP_INIT_LLM="false",  # the tiny checkpoint has no LM; the 4B download is tested below
    )
    server = Entrypoint(env, tmp_path / "server.log")
    try:
        server.wait_port(ui)
        server.wait_port(api)
        page = httpx.get(f"http://127.0.0.1:{ui}/", timeout=30, trust_env=False)
        assert page.status_code == 200 and "gradio" in page.text.lower()  # the UI (its login page)
        summary = check_job(api, "--task", "text2music", "--seconds", "4")
        # One server behind both ports: the job is visible from the UI port as well.
        task_id = summary["job"]["task_id"]
        listed = httpx.post(
            f"http://127.0.0.1:{ui}/query_result",
            json={"task_id_list": [task_id]},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
            trust_env=False,
        )
        assert listed.json()["data"][0]["status"] == 1
    finally:
        server.stop()
    assert summary["health"]["loaded_model"] == "acestep-v15-turbo"
    assert summary["unload"]["action"] == "free"
    assert list((tmp_path / "app" / "outputs").rglob("*.wav"))


def test_missing_models_that_cannot_be_downloaded_stop_the_start(tmp_path, upstream_turbo):
    env = entry_env(tmp_path, "4090", upstream_turbo, ACESTEP_API_PORT=str(free_port()))
    done = subprocess.run(["bash", ENTRYPOINT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "downloading acestep-5Hz-lm-4B" in done.stderr
    assert "could not be downloaded" in done.stderr and str(upstream_turbo) in done.stderr
    assert done.stdout == ""  # stdout stays clean: it is acestep-mcp's stdio channel


def test_download_step_can_be_skipped_and_commands_overridden(tmp_path, upstream_turbo):
    env = entry_env(tmp_path, "4090", upstream_turbo, ACESTEP_DOWNLOAD_ON_START="false")
    done = subprocess.run(
        ["bash", ENTRYPOINT, "acestep-download", "--list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "acestep-5Hz-lm-4B" in [line.split()[0] for line in done.stdout.splitlines() if line]
    assert "downloading" not in done.stdout


def test_without_a_key_only_loopback_publishing_may_serve(tmp_path, upstream_base):
    api = free_port()
    env = entry_env(tmp_path, "t4", upstream_base, ACESTEP_API_PORT=str(api), ACESTEP_PUBLISH_HOST="0.0.0.0")
    del env["ACESTEP_API_KEY"]
    done = subprocess.run(["bash", ENTRYPOINT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "refusing to listen on 0.0.0.0 without an API key" in done.stderr
    env["ACESTEP_PUBLISH_HOST"] = "127.0.0.1"
    server = Entrypoint(env, tmp_path / "server.log")
    try:
        server.wait_port(api)
        memory = httpx.get(f"http://127.0.0.1:{api}/v1/memory", timeout=30, trust_env=False)
        assert memory.status_code == 200  # no key needed
    finally:
        server.stop()
    assert (
        "serving without authentication (published on 127.0.0.1 only)"
        in (tmp_path / "server.log").read_text()
    )


def test_without_a_key_the_published_address_is_an_allowed_host(tmp_path, upstream_base):
    """ACESTEP_AUTH=off published on one LAN address: requests naming it are answered, others 421."""
    api = free_port()
    env = entry_env(
        tmp_path, "t4", upstream_base, ACESTEP_API_PORT=str(api), ACESTEP_PUBLISH_HOST="192.0.2.10",
        ACESTEP_AUTH="off",
    )  # fmt: skip
    del env["ACESTEP_API_KEY"]
    server = Entrypoint(env, tmp_path / "server.log")
    try:
        server.wait_port(api)
        url = f"http://127.0.0.1:{api}/health"
        assert httpx.get(url, headers={"Host": "192.0.2.10:8501"}, trust_env=False).status_code == 200
        assert httpx.get(url, headers={"Host": "attacker.example"}, trust_env=False).status_code == 421
    finally:
        server.stop()


def test_bad_serve_mode_is_refused(tmp_path, upstream_turbo):
    env = entry_env(tmp_path, "4090", upstream_turbo, ACESTEP_SERVE="bogus")
    done = subprocess.run(["bash", ENTRYPOINT], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "ACESTEP_SERVE must be ui or api, got 'bogus'" in done.stderr


def test_api_port_needs_enable_api(capsys):
    from acestep.cli import main

    assert main(["--api-port", "8001"]) == 2
    assert "--api-port needs --enable-api" in capsys.readouterr().err
