"""Prometheus text for ``GET /metrics``, built from the job queue's ``stats()`` at each scrape.

Both backends give the same statistics shape, so one server and a cluster export the same
metrics; in a cluster every API server reads them from Redis and shows the whole cluster.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StatsCollector:
    def __init__(self, stats: dict):
        self.stats = stats

    def collect(self):
        stats = self.stats
        jobs = GaugeMetricFamily("acestep_jobs", "Job records by state", labels=["state"])
        for state in ("queued", "running", "succeeded", "failed"):
            jobs.add_metric([state], stats["jobs"].get(state, 0))
        yield jobs
        depth = GaugeMetricFamily("acestep_queue_depth", "Jobs waiting, per model queue", labels=["model"])
        for model, count in sorted(stats.get("queue_by_model", {}).items()):
            depth.add_metric([model], count)
        yield depth
        yield GaugeMetricFamily(
            "acestep_queue_maxsize", "Most jobs accepted at once", value=stats["queue_maxsize"]
        )
        labels = ["worker", "model", "gpu"]
        up = GaugeMetricFamily("acestep_worker_up", "1 while the worker heartbeats", labels=labels)
        loaded = GaugeMetricFamily(
            "acestep_worker_model_state", "1 for the worker's residency state", labels=[*labels, "state"]
        )
        busy = GaugeMetricFamily("acestep_worker_busy", "1 while the worker runs a job", labels=labels)
        used = GaugeMetricFamily(
            "acestep_worker_vram_used_bytes", "GPU memory the worker holds", labels=labels
        )
        total = GaugeMetricFamily(
            "acestep_worker_vram_total_bytes", "GPU memory of the worker's GPU", labels=labels
        )
        for worker in stats.get("workers", []):
            values = [str(worker.get("id")), str(worker.get("model")), str(worker.get("gpu"))]
            up.add_metric(values, 1 if worker.get("alive") else 0)
            loaded.add_metric([*values, str(worker.get("state"))], 1)
            busy.add_metric(values, 1 if worker.get("running") else 0)
            if worker.get("vram_used_bytes") is not None:
                used.add_metric(values, worker["vram_used_bytes"])
            if worker.get("vram_total_bytes") is not None:
                total.add_metric(values, worker["vram_total_bytes"])
        yield from (up, loaded, busy, used, total)
        durations = stats.get("durations")
        if durations:
            buckets = [(floatToGoString(bound), count) for bound, count in durations["buckets"]]
            buckets.append(("+Inf", durations["count"]))
            yield HistogramMetricFamily(
                "acestep_job_duration_seconds",
                "Time from a job's start to its end on a worker",
                buckets=buckets,
                sum_value=durations["sum"],
            )


def render(stats: dict) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    return generate_latest(registry)
