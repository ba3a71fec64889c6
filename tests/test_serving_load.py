"""Load: 300 jobs submitted concurrently with random unloads in between. Every job ends succeeded
or failed with a reason, none is lost, and memory is back at its baseline at the end."""

from __future__ import annotations

import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import soundfile as sf
from _server import Server

from acestep.testing import synthetic_audio

JOBS = 300


def test_300_concurrent_jobs_with_random_unloads(upstream_base, tmp_path):
    srv = Server(upstream_base, tmp_path, ACESTEP_QUEUE_MAXSIZE="400")
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_audio(5.5, seed=3), 48000, format="WAV", subtype="PCM_16")
    source = buffer.getvalue()
    try:
        baseline = srv.get("/v1/memory").json()["data"]
        assert baseline["worker"]["pid"] is None and set(baseline["residency"].values()) == {"unloaded"}

        def submit(index: int) -> str:
            if index % 10 == 0:  # every tenth job is a lego with an upload
                fields = {"task_type": "lego", "track_name": "drums", "seed": str(index), "batch_size": "1",
                          "inference_steps": "2", "audio_format": "flac"}  # fmt: skip
                return srv.release(data=fields, files={"ctx_audio": ("s.wav", source, "audio/wav")})
            body = {"prompt": f"job {index}", "audio_duration": 6, "seed": index, "batch_size": 1,
                    "inference_steps": 2, "audio_format": "flac"}  # fmt: skip
            return srv.release(json=body)

        stop = threading.Event()
        unloads: list[str] = []
        unload_errors: list[str] = []  # asserted in the main thread (a thread's assert is lost)

        def unloader() -> None:
            rng = random.Random(7)
            # A dozen unloads over the run: each free costs a worker restart (seconds on CPU).
            while len(unloads) < 12 and not stop.wait(rng.uniform(2.0, 6.0)):
                level = rng.choice(("park", "park", "free"))
                response = srv.post("/unload", json={"level": level})
                if response.status_code != 200:
                    unload_errors.append(response.text)
                unloads.append(level)

        thread = threading.Thread(target=unloader)
        thread.start()
        with ThreadPoolExecutor(max_workers=16) as pool:
            task_ids = list(pool.map(submit, range(JOBS)))
        assert len(set(task_ids)) == JOBS

        deadline = time.monotonic() + 900
        pending = set(task_ids)
        finished: dict[str, dict] = {}
        while pending and time.monotonic() < deadline:
            batch = list(pending)[:100]
            entries = srv.post("/query_result", json={"task_id_list": batch}).json()["data"]
            for entry in entries:
                if entry["status"] != 0:
                    finished[entry["task_id"]] = entry
                    pending.discard(entry["task_id"])
            time.sleep(0.2)
        stop.set()
        thread.join()
        assert not pending, f"{len(pending)} jobs never finished"
        failed = [e for e in finished.values() if e["status"] != 1]
        assert all(e["status"] == 2 and e["error"] for e in failed)  # a failure always says why
        assert len(failed) == 0, [e["error"] for e in failed][:5]
        assert unloads, "the unloader never ran"
        assert unload_errors == []

        stats = srv.get("/v1/stats").json()["data"]
        assert stats["jobs"]["succeeded"] == JOBS and stats["queue_size"] == 0
        assert srv.wait(submit(JOBS + 1))["status"] == 1  # a live worker for the final measured free
        free = srv.post("/unload", json={"level": "free"}).json()["data"]
        assert free["action"] == "free" and free["after"]["rss_bytes"] == 0  # the worker process is gone
        assert free["before"]["rss_bytes"] > 0 and "exited with code 0" in free["note"]
        memory = srv.get("/v1/memory").json()["data"]
        assert memory["worker"]["pid"] is None and set(memory["residency"].values()) == {"unloaded"}
        assert memory["worker"]["state"] == baseline["worker"]["state"] == "unloaded"
    finally:
        srv.stop()
