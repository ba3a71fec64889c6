"""Cluster queue throughput with no-op engines: jobs/s through Redis for 1, 2 and 4 workers.

A real ``redis-server`` (AOF on, ``appendfsync always`` as the docs recommend) on a free loopback
port, real ``acestep-worker --engine noop`` processes, and the API servers' own queue code
(``RedisJobQueue``) submitting. Each job still does the full path: route, record, message, claim,
progress, a 0.1 s WAV written into the attempt's own folder, the result recorded, the ack.
``--hold`` adds seconds of "work" per job, to show how the queue spreads work over workers when
the engine, not the queue, is the bottleneck.

    python bench/bench_queue.py --jobs 400 --workers 1 2 4 --hold 0 0.05
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from _common import git_commit, write_report

from acestep.cluster.queue import RedisJobQueue
from acestep.cluster.settings import ClusterSettings
from acestep.request import GenerationRequest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "queue" / "queue.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def run_case(url: str, workdir: Path, workers: int, jobs: int, hold: float) -> dict:
    namespace = f"bench{workers}x{int(hold * 1000)}"
    settings = ClusterSettings(url=url, namespace=namespace, heartbeat_timeout_s=10)
    env = os.environ | {
        "ACESTEP_QUEUE_URL": url,
        "ACESTEP_QUEUE_NAMESPACE": namespace,
        "ACESTEP_TMPDIR": str(workdir),
        "ACESTEP_NOOP_SECONDS": str(hold),
    }
    code = "from acestep.cli import worker_main; raise SystemExit(worker_main())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, "--engine", "noop", "--dit", "noop", "--name", f"w{i}"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        for i in range(workers)
    ]
    queue = RedisJobQueue(settings, workdir / "api_audio", "noop", ["text2music"], "noop", maxsize=jobs + 1)
    try:
        deadline = time.monotonic() + 60
        while sum(w["alive"] for w in queue.workers()) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.1)
        request = GenerationRequest(caption="bench", audio_duration=10)
        started = time.perf_counter()
        ids = [queue.submit(request).id for _ in range(jobs)]
        submitted = time.perf_counter() - started
        records = [queue.wait(task, timeout=600) for task in ids]
        elapsed = time.perf_counter() - started
        assert all(r.state == "succeeded" for r in records)
        latencies = sorted(r.finished - r.created for r in records)
        per_worker = {}
        for r in records:
            per_worker[r.worker] = per_worker.get(r.worker, 0) + 1
        return {
            "workers": workers,
            "hold_s": hold,
            "jobs": jobs,
            "submit_per_s": round(jobs / submitted, 1),
            "jobs_per_s": round(jobs / elapsed, 1),
            "ideal_jobs_per_s": round(workers / hold, 1) if hold else None,
            "latency_p50_s": round(latencies[len(latencies) // 2], 3),
            "latency_p95_s": round(latencies[int(len(latencies) * 0.95)], 3),
            "jobs_per_worker": sorted(per_worker.values()),
        }
    finally:
        queue.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--hold", type=float, nargs="+", default=[0.0, 0.05])
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("error: redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, url = _start_redis(workdir)
        try:
            cases = [run_case(url, workdir, n, args.jobs, hold) for hold in args.hold for n in args.workers]
        finally:
            proc.terminate()
            proc.wait()
    report = {
        "benchmark": "cluster queue throughput, no-op engines",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip(),
        "commit": git_commit(),
        "command": "python bench/bench_queue.py " + " ".join(sys.argv[1:]),
        "cases": cases,
    }
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
