"""Model lifecycle in one process on a tiny checkpoint: load, park, free, OOM recovery, keep-alive,
and the unload/submit race."""

from __future__ import annotations

import gc
import random
import threading
import time
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from acestep import GenerationRequest
from acestep.errors import JobError
from acestep.memory.gpus import StaticSource
from acestep.memory.keep_alive import NEVER, KeepAlivePolicy
from acestep.memory.manager import MemoryManager
from acestep.worker.dispatcher import BusyError, Dispatcher
from acestep.worker.runner import EngineSpec, InProcessRunner
from acestep.worker.supervisor import Supervisor

SECONDS = 6.0
FRAMES = int(SECONDS * 25)


def request(seed: int = 7, **fields) -> GenerationRequest:
    base = {"caption": "lifecycle", "audio_duration": SECONDS, "inference_steps": 4, "batch_size": 1}
    return GenerationRequest(**(base | fields), seed=seed, audio_format="wav")


def audio_of(result) -> np.ndarray:
    return np.stack([sf.read(p, dtype="float32")[0] for p in result.audio_paths])


@pytest.fixture
def runner(upstream_turbo):
    return InProcessRunner(EngineSpec(str(upstream_turbo), device="cpu"))


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_load_park_free_are_measured_and_keep_outputs_identical(runner, tmp_path):
    assert runner.state == "unloaded" and set(runner.residency().values()) == {"unloaded"}
    load = runner.load()
    assert load.action == "load" and load.seconds > 0 and runner.state == "ready"
    assert load.after.rss_bytes > 0 and load.after.pid > 0
    assert runner.residency()["dit"] == "cpu" and runner.residency()["lm"] == "unloaded"
    reference = audio_of(runner.generate(request(), tmp_path / "a"))

    park = runner.unload("park")
    assert park.action == "park" and runner.state == "parked"
    assert park.as_dict()["residency"]["dit"] == "cpu"
    assert np.array_equal(audio_of(runner.generate(request(), tmp_path / "b")), reference)
    assert runner.state == "ready"

    free = runner.unload("free")
    assert free.action == "free" and runner.state == "unloaded" and runner.engine is None
    assert set(free.residency.values()) == {"unloaded"}
    assert free.as_dict()["freed_reserved_bytes"] == 0  # CPU-only: the allocator counters stay at zero
    assert np.array_equal(audio_of(runner.generate(request(), tmp_path / "c")), reference)
    with pytest.raises(ValueError, match="park or free"):
        runner.unload("nap")


def _job_tensors() -> int:
    """Live tensors shaped like this test's latents (nothing outside a job has that shape)."""
    gc.collect()
    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # probing every object trips deprecated module attributes
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor) and tuple(obj.shape[-2:]) == (FRAMES, 8):
                    count += 1
            except Exception:  # objects that misbehave under isinstance/shape probing
                continue
    return count


def test_oom_fails_the_job_releases_it_and_the_next_job_succeeds(runner, tmp_path):
    reference = audio_of(runner.generate(request(), tmp_path / "ref"))
    assert _job_tensors() == 0
    runner.inject_fault("diffusion", "oom")
    with pytest.raises(JobError) as err:
        runner.generate(request(), tmp_path / "oom")
    assert err.value.kind == "oom"
    assert "ran out of memory" in str(err.value) and "ACESTEP_OFFLOAD_TO_CPU" in str(err.value)
    assert err.value.__cause__ is None and err.value.__context__ is None  # nothing holds the job's frames
    assert _job_tensors() == 0  # the latents the failed job held are gone
    assert runner.state == "ready"
    assert np.array_equal(audio_of(runner.generate(request(), tmp_path / "after")), reference)


def test_injected_plain_error_is_an_internal_failure(runner, tmp_path):
    runner.inject_fault("decode", "error")
    with pytest.raises(JobError, match="injected failure at decode") as err:
        runner.generate(request(), tmp_path)
    assert err.value.kind == "internal"
    with pytest.raises(ValueError, match="fault kind"):
        runner.inject_fault("decode", "meteor")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keep_alive_unloads_exactly_when_the_deadline_passes(runner, tmp_path):
    clock = FakeClock()
    dispatcher = Dispatcher(runner, KeepAlivePolicy(default=60.0, idle_level="park"), clock=clock)
    try:
        job = dispatcher.submit(request(), tmp_path).wait(60)
        assert job.state == "succeeded" and runner.state == "ready"
        clock.now += 59.0
        dispatcher.wake()
        time.sleep(0.3)
        assert dispatcher.unloads == [] and runner.state == "ready"
        clock.now += 1.0
        dispatcher.wake()
        wait_for(lambda: dispatcher.unloads == [("park", "keep-alive expired")])
        assert runner.state == "parked"

        # A per-request keep-alive of 0 unloads right after that job (the level is the server's).
        dispatcher.policy = KeepAlivePolicy(default=60.0, idle_level="free")
        dispatcher.submit(request(keep_alive=0), tmp_path).wait(60)
        wait_for(lambda: len(dispatcher.unloads) == 2)
        assert dispatcher.unloads[-1] == ("free", "keep-alive expired") and runner.state == "unloaded"

        # -1 never unloads, however long the clock runs.
        dispatcher.submit(request(keep_alive=-1), tmp_path).wait(60)
        clock.now += 10**9
        dispatcher.wake()
        time.sleep(0.3)
        assert len(dispatcher.unloads) == 2 and runner.state == "ready"
    finally:
        dispatcher.stop()


def test_unload_waits_for_the_running_job_or_is_refused(runner, tmp_path):
    dispatcher = Dispatcher(runner, KeepAlivePolicy(default=NEVER))
    try:
        slow = request(inference_steps=20)
        runner.inject_fault("never-reported", "error")  # consumed by the next job, never fires
        job = dispatcher.submit(slow, tmp_path)
        wait_for(lambda: job.state == "running")
        report = dispatcher.unload("park")
        assert job.done.is_set() and job.state == "succeeded"  # the unload ran after the job
        assert report.action == "park" and runner.state == "parked"
    finally:
        dispatcher.stop()

    refusing = Dispatcher(runner, KeepAlivePolicy(default=NEVER), refuse_unload_when_busy=True)
    try:
        job = refusing.submit(request(inference_steps=20), tmp_path)
        wait_for(lambda: job.state == "running")
        with pytest.raises(BusyError, match="is running; unload refused"):
            refusing.unload("free")
        assert job.wait(60).state == "succeeded"
        assert refusing.unload("free").action == "free"
    finally:
        refusing.stop()


def test_a_job_guard_wraps_each_job_and_can_refuse_it(runner, tmp_path):
    """The hook the shared GPU token queue uses: entered before the GPU work, left after it."""
    import contextlib

    from acestep.worker.dispatcher import GuardError

    events = []

    @contextlib.contextmanager
    def guard(job):
        events.append(("enter", job.id, job.state))
        try:
            yield
        finally:
            events.append(("exit", job.id, job.result is not None))

    dispatcher = Dispatcher(runner, KeepAlivePolicy(default=NEVER))
    try:
        dispatcher.job_guard = guard
        job = dispatcher.submit(request(), tmp_path).wait(60)
        assert job.state == "succeeded"
        assert events == [("enter", job.id, "running"), ("exit", job.id, True)]

        def refuse(job):
            raise GuardError("the GPU queue at http://127.0.0.1:9 is unreachable")

        dispatcher.job_guard = refuse
        refused = dispatcher.submit(request(), tmp_path).wait(60)
        assert (refused.state, refused.error_kind) == ("failed", "gpu_queue")
        assert "unreachable" in refused.error
    finally:
        dispatcher.stop()


def test_commands_after_shutdown_are_refused_not_left_hanging(runner, tmp_path):
    dispatcher = Dispatcher(runner, KeepAlivePolicy(default=NEVER))
    dispatcher.stop()
    with pytest.raises(RuntimeError, match="shutting down"):
        dispatcher.unload("free", timeout=5)
    with pytest.raises(RuntimeError, match="shutting down"):
        dispatcher.submit(request(), tmp_path)


def test_submissions_racing_keep_alive_unloads_all_complete(runner, tmp_path):
    """Keep-alive 0 frees the model the moment the queue empties; clients submit in rounds released
    together at exactly that moment, so submissions race the unload decision every round."""
    rounds, clients = 5, 4
    dispatcher = Dispatcher(runner, KeepAlivePolicy(default=0.0, idle_level="free"))
    barrier = threading.Barrier(clients)
    jobs, errors = [], []
    lock = threading.Lock()

    def client(index: int) -> None:
        rng = random.Random(index)
        for _ in range(rounds):
            barrier.wait()
            time.sleep(rng.uniform(0.0, 0.02))
            try:
                job = dispatcher.submit(request(seed=11), tmp_path / f"c{index}")
            except Exception as exc:  # a refused submission is a failure of this test
                errors.append(exc)
                continue
            with lock:
                jobs.append(job)
            job.wait(120)

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        dispatcher.stop()
    assert errors == [] and len(jobs) == rounds * clients
    assert [job.state for job in jobs] == ["succeeded"] * len(jobs), [job.error for job in jobs]
    assert dispatcher.unloads and all(u == ("free", "keep-alive expired") for u in dispatcher.unloads)
    outputs = {audio_of(job.result).tobytes() for job in jobs}
    assert len(outputs) == 1  # the same seed gave the same audio across every unload and reload


def test_supervisor_runs_jobs_in_process_and_reports(upstream_turbo, tmp_path):
    env = {"ACESTEP_KEEP_ALIVE": "-1", "ACESTEP_MAX_BATCH_SIZE": "2"}
    mm = Supervisor(MemoryManager(source=StaticSource([]), env=env))
    with pytest.raises(RuntimeError, match="call Supervisor.start"):
        mm.submit(request(), tmp_path)
    mm.start(EngineSpec(str(upstream_turbo), device="cpu"), in_process=True)
    try:
        load = mm.load()
        assert load["action"] == "load"
        job = mm.submit(request(batch_size=2), tmp_path).wait(60)
        assert job.state == "succeeded" and len(job.result.items) == 2
        status = mm.get_status()
        assert status["worker"]["mode"] == "InProcessRunner" and status["worker"]["state"] == "ready"
        assert status["residency"]["dit"] == "cpu"
        free = mm.unload("free")
        assert free["action"] == "free" and free["residency"]["dit"] == "unloaded"
        assert [r["action"] for r in mm.get_status()["last_reports"]] == ["load", "free"]
        # A job after a free reloads, and that implicit load is measured and recorded too.
        again = mm.submit(request(batch_size=2), tmp_path).wait(60)
        assert again.state == "succeeded"
        last = mm.get_status()["last_reports"][-1]
        assert (last["action"], last["reason"]) == ("load", f"needed by {again.id}") and last["seconds"] > 0
        from acestep.memory.limits import MemoryLimitError

        with pytest.raises(MemoryLimitError, match="ACESTEP_MAX_BATCH_SIZE"):
            mm.submit(request(batch_size=3), tmp_path)
    finally:
        mm.close()
