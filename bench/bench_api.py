"""REST API overhead with a no-op engine: what the server itself costs per job.

A real uvicorn on 127.0.0.1 serves the real app, queue and dispatcher; only the runner is replaced
by one that returns at once (no model, no files), so the figures are the HTTP, parsing, queueing
and polling costs. Reported: submit latency (POST /release_task), submit-to-first-poll latency
(submit, then the first POST /query_result), end-to-end latency until the poll says succeeded,
and throughput with many concurrent clients.

    python bench/bench_api.py --jobs 500 --clients 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn
from _common import git_commit, write_report

from acestep.memory.gpus import StaticSource
from acestep.memory.keep_alive import KeepAlivePolicy
from acestep.memory.manager import MemoryManager
from acestep.request import GenerationRequest
from acestep.result import GenerationResult
from acestep.serving.app import create_app
from acestep.serving.config import ServerConfig
from acestep.testing import make_tiny_checkpoint
from acestep.worker.dispatcher import Dispatcher
from acestep.worker.supervisor import Supervisor

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "api.json"


class NoopRunner:
    """The runner interface with no engine: every job succeeds at once with no files."""

    state = "ready"
    pid = None
    alive = False

    def restart(self) -> None:
        pass

    def residency(self) -> dict:
        return {}

    def load(self):
        raise NotImplementedError

    def unload(self, level: str):
        raise NotImplementedError

    def take_job_load(self):
        return None

    def generate(self, request: GenerationRequest, output_dir, progress=None) -> GenerationResult:
        return GenerationResult(
            items=[], sample_rate=48000, task_type=request.task_type, model="noop", variant="base",
            metas={}, timings={"total": 0.0},
        )  # fmt: skip


def serve(workdir: Path) -> tuple[uvicorn.Server, int]:
    checkpoint = make_tiny_checkpoint(workdir / "ckpt", layout="upstream", variant="base", seed=0)
    config = ServerConfig.from_env(env={"ACESTEP_TMPDIR": str(workdir / "tmp")}, checkpoint=str(checkpoint))
    config.queue_maxsize = 100_000
    env = {"ACESTEP_DEVICE": "cpu", "ACESTEP_KEEP_ALIVE": "-1"}
    supervisor = Supervisor(MemoryManager(source=StaticSource([]), env=env))
    supervisor.dispatcher = Dispatcher(NoopRunner(), KeepAlivePolicy(default=float("inf")))
    app = create_app(config, supervisor)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, port


def one_job(client: httpx.Client) -> dict:
    body = {"prompt": "bench", "audio_duration": 10, "batch_size": 1, "seed": 1}
    start = time.perf_counter()
    task = client.post("/release_task", json=body).json()["data"]["task_id"]
    submitted = time.perf_counter()
    first = None
    while True:
        entry = client.post("/query_result", json={"task_id_list": [task]}).json()["data"][0]
        first = first or time.perf_counter()
        if entry["status"] != 0:
            break
    done = time.perf_counter()
    assert entry["status"] == 1, entry
    return {"submit": submitted - start, "first_poll": first - start, "done": done - start}


def pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1] * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        server, port = serve(Path(work))
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, trust_env=False) as client:
            for _ in range(20):  # warm-up
                one_job(client)
            serial = [one_job(client) for _ in range(min(args.jobs, 200))]
        started = time.perf_counter()

        def worker(count: int) -> list[dict]:
            with httpx.Client(base_url=base, trust_env=False, timeout=60) as client:
                return [one_job(client) for _ in range(count)]

        per_client = args.jobs // args.clients
        with ThreadPoolExecutor(args.clients) as pool:
            results = [r for batch in pool.map(worker, [per_client] * args.clients) for r in batch]
        elapsed = time.perf_counter() - started
        server.should_exit = True
    report = {
        "command": "python bench/bench_api.py " + " ".join(argv or sys.argv[1:]),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "serial_ms": {
            key: {"p50": pct([r[key] for r in serial], 50), "p95": pct([r[key] for r in serial], 95)}
            for key in ("submit", "first_poll", "done")
        },
        "concurrent": {
            "clients": args.clients,
            "jobs": len(results),
            "seconds": round(elapsed, 2),
            "jobs_per_second": round(len(results) / elapsed, 1),
            "done_ms_p50": pct([r["done"] for r in results], 50),
            "done_ms_p95": pct([r["done"] for r in results], 95),
        },
    }
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
