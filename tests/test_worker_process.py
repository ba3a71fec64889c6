"""The GPU worker as a real separate process: crash and restart, OOM, and ``free`` ending it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import soundfile as sf

from acestep import GenerationRequest
from acestep.memory.keep_alive import NEVER, KeepAlivePolicy
from acestep.worker.dispatcher import Dispatcher
from acestep.worker.process import ProcessRunner
from acestep.worker.runner import EngineSpec


def request(seed: int = 5, **fields) -> GenerationRequest:
    base = {
        "caption": "worker",
        "audio_duration": 6.0,
        "batch_size": 1,
        "audio_format": "wav",
        "inference_steps": 4,
    }
    return GenerationRequest(**(base | fields), seed=seed)


def samples(job) -> np.ndarray:
    return sf.read(job.result.audio_paths[0], dtype="float32")[0]


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def dispatcher(upstream_base):
    # The base model honours inference_steps, so a job can be made long enough to kill mid-way.
    runner = ProcessRunner(EngineSpec(str(upstream_base), device="cpu"), env={"ACESTEP_DEVICE": "cpu"})
    dispatcher = Dispatcher(runner, KeepAlivePolicy(default=NEVER))
    yield dispatcher
    dispatcher.stop()


def test_jobs_run_in_a_separate_process_and_survive_a_killed_worker(dispatcher, tmp_path):
    runner = dispatcher.runner
    first = dispatcher.submit(request(), tmp_path / "a").wait(180)
    assert first.state == "succeeded", first.error
    assert first.result.seeds == [5]  # the written seed crossed the process boundary as written
    pid = runner.pid
    assert pid != os.getpid() and runner.alive and runner.residency()["dit"] == "cpu"

    # SIGKILL the worker in the middle of the diffusion loop.
    def kill_mid_job() -> bool:
        return job.stage == "diffusion"

    job = dispatcher.submit(request(seed=6, inference_steps=200, audio_duration=30), tmp_path / "b")
    deadline = time.monotonic() + 120
    while not kill_mid_job():
        assert time.monotonic() < deadline and not job.done.is_set()
        time.sleep(0.001)
    runner.kill()
    job.wait(60)
    assert job.state == "failed" and job.error_kind == "crash"
    assert f"process {pid} was killed by SIGKILL during the job" in job.error

    # The dispatcher replaced the worker; the next job runs there and matches the first run.
    assert runner.alive and runner.pid != pid and not process_exists(pid)
    again = dispatcher.submit(request(), tmp_path / "c").wait(180)
    assert again.state == "succeeded", again.error
    # Samples, not bytes: a float WAV's PEAK chunk carries a timestamp.
    assert np.array_equal(samples(again), samples(first))


def test_free_after_the_worker_died_idle_reports_it_and_starts_nothing(dispatcher, tmp_path):
    runner = dispatcher.runner
    assert dispatcher.submit(request(), tmp_path).wait(180).state == "succeeded"
    pid, starts = runner.pid, runner.starts
    runner.kill()
    runner.proc.wait()
    free = dispatcher.unload("free")
    assert free.note == f"worker process {pid} was killed by SIGKILL"
    assert runner.starts == starts and runner.pid is None and not process_exists(pid)


def test_a_worker_that_exits_mid_job_fails_the_job_with_its_exit_code(dispatcher, tmp_path):
    dispatcher.runner.inject_fault("diffusion", "crash")
    job = dispatcher.submit(request(), tmp_path).wait(180)
    assert job.state == "failed" and "exited with code 70 during the job" in job.error
    assert dispatcher.submit(request(), tmp_path).wait(180).state == "succeeded"


def test_oom_in_the_worker_fails_one_job_and_keeps_the_worker(dispatcher, tmp_path):
    dispatcher.runner.inject_fault("diffusion", "oom")
    pid = dispatcher.runner.pid
    job = dispatcher.submit(request(), tmp_path).wait(180)
    assert job.state == "failed" and job.error_kind == "oom" and "ran out of memory" in job.error
    assert dispatcher.runner.pid == pid  # an OOM is the job's failure, not the worker's
    assert dispatcher.submit(request(), tmp_path).wait(180).state == "succeeded"


def test_park_then_free_ends_the_worker_process(dispatcher, tmp_path):
    runner = dispatcher.runner
    assert dispatcher.submit(request(), tmp_path).wait(180).state == "succeeded"
    pid = runner.pid
    park = dispatcher.unload("park")
    assert park.action == "park" and runner.state == "parked" and runner.pid == pid
    assert park.before.pid == pid and park.after.rss_bytes > 0  # measured inside the worker
    reports = []
    dispatcher.on_report = lambda report, reason: reports.append((report.action, reason))
    woken = dispatcher.submit(request(), tmp_path).wait(180)
    assert woken.state == "succeeded" and reports == [("wake", f"needed by {woken.id}")]
    assert runner.pid == pid  # a wake reuses the parked worker
    free = dispatcher.unload("free")
    assert free.action == "free" and free.note == f"worker process {pid} exited with code 0"
    assert free.before.pid == pid and free.before.rss_bytes > 0
    assert free.after.rss_bytes == 0 and free.after.reserved_bytes == 0
    assert runner.pid is None and not runner.alive and not process_exists(pid)
    assert set(runner.residency().values()) == {"unloaded"}
    # The next job starts a fresh worker, and the load it needed comes back measured.
    reports = []
    dispatcher.on_report = lambda report, reason: reports.append((report.action, reason))
    job = dispatcher.submit(request(), tmp_path).wait(180)
    assert job.state == "succeeded" and reports == [("load", f"needed by {job.id}")]
    assert runner.pid not in (None, pid)


def test_a_server_process_never_imports_torch_and_free_leaves_no_worker(upstream_turbo, tmp_path):
    """The whole server side in a fresh interpreter: manager, supervisor + process worker, one job, free."""
    script = textwrap.dedent(
        f"""
        import json, os, sys
        from acestep import GenerationRequest
        from acestep.memory.gpus import StaticSource
        from acestep.memory.manager import MemoryManager
        from acestep.worker.runner import EngineSpec
        from acestep.worker.supervisor import Supervisor

        mm = Supervisor(MemoryManager(StaticSource([]), env={{"ACESTEP_KEEP_ALIVE": "-1"}}))
        mm.start(EngineSpec({str(upstream_turbo)!r}, device="cpu"))
        request = GenerationRequest(audio_duration=6, batch_size=1, seed=1)
        job = mm.submit(request, {str(tmp_path)!r}).wait(300)
        status = mm.get_status()
        free = mm.unload("free")
        print(json.dumps({{
            "state": job.state, "error": job.error, "worker_pid": status["worker"]["pid"],
            "mode": status["worker"]["mode"], "free_note": free["note"],
            "torch_imported": "torch" in sys.modules, "after": mm.get_status()["worker"],
        }}))
        mm.close()
        """
    )
    env = os.environ | {"ACESTEP_DEVICE": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["state"] == "succeeded", out["error"]
    assert out["mode"] == "ProcessRunner" and out["torch_imported"] is False
    assert out["free_note"] == f"worker process {out['worker_pid']} exited with code 0"
    assert out["after"]["pid"] is None and out["after"]["state"] == "unloaded"
    assert not process_exists(out["worker_pid"])
