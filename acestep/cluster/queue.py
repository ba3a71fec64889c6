"""``RedisJobQueue``: the job queue interface for API servers, over Redis.

A server keeps no job state of its own: any number of them behind a load balancer see the same
records, and any of them serves a result, since audio lives in the shared results directory
(``ACESTEP_OUTPUT_DIR`` on storage every server and worker mounts at the same path).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import redis
from loguru import logger

from acestep.cluster.broker import job_message, make_broker, redis_client
from acestep.cluster.records import JobRecord
from acestep.cluster.routing import choose_model
from acestep.cluster.settings import ClusterSettings, redacted
from acestep.cluster.store import JobStore
from acestep.engine.request import GenerationRequest
from acestep.serving.jobs import QueueFull, QueueUnavailable, average_fields, remove_paths

POLL_S = 0.2
UNSENT_GRACE_S = 60  # a queued job without its message this long after creation was never sent
API_RETRIES = 2  # a blip is retried; a Redis that stays away is a 503 with Retry-After


class RedisJobQueue:
    routes_by_model = True

    def __init__(
        self,
        settings: ClusterSettings,
        results_dir: Path,
        default_model: str,
        default_tasks: Iterable[str],
        default_variant: str,
        maxsize: int = 200,
        result_ttl_s: int = 86400,
        cleanup_interval_s: int = 300,
        seed_seconds: float = 5.0,
    ):
        self.settings = settings
        self.client = redis_client(settings, retries=API_RETRIES)
        self.store = JobStore(self.client, settings.namespace)
        self.broker = make_broker(settings, self.client)
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.default_model = default_model
        self.default_info = {"variant": default_variant, "tasks": sorted(default_tasks)}
        self.maxsize = maxsize
        self.result_ttl_s = result_ttl_s
        self.seed_seconds = seed_seconds
        self._suspects: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, args=(cleanup_interval_s,), name="acestep-retention", daemon=True
        )
        self._sweeper.start()

    # -- jobs ---------------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest,
        uses_lm: bool | None = None,
        cleanup: Iterable[Path] = (),
        lm_only: bool = False,
        model: str | None = None,
    ) -> JobRecord:
        with _unavailable("queue the job"):
            models = {self.default_model: self.default_info} | self.store.models()
            chosen, warnings = choose_model(
                request.effective_task, model, self.default_model, models, self.store.workers()
            )
            depth = sum(self.store.pending().values())
            if depth >= self.maxsize:
                recent = self.store.recent_durations("succeeded")
                average = sum(recent) / len(recent) if recent else self.seed_seconds
                raise QueueFull(self.maxsize, max(1, int(average * depth / 2) or 1))
            record = JobRecord(
                id=str(uuid.uuid4()),
                request=request,
                model=chosen,
                created=time.time(),
                lm_only=lm_only,
                uses_lm=uses_lm,
                cleanup=[str(p) for p in cleanup],
            )
            self.store.create(record)
            try:
                self.broker.enqueue(job_message(chosen, record.id))
            except Exception:
                # The record must not wait forever for a message that was never sent (the reaper
                # fails it later if Redis is gone now).
                try:
                    self._fail_unsent(record.id, "could not queue the job: Redis failed while it was sent")
                except redis.RedisError:
                    pass
                raise
            self.store.mark_sent(record.id)
        record.warnings = warnings
        return record

    def get(self, task_id: str) -> JobRecord | None:
        with _unavailable("read the job"):
            record = self.store.get(task_id)
            if record is not None and record.state == "running" and not self.store.alive(record.worker or ""):
                # Its worker stopped; the broker gives the job to another worker (or fails it after
                # a second stop). Shown as waiting, which is what it does now.
                record.state, record.stage = "queued", f"requeued: worker {record.worker} stopped"
        return record

    def position(self, task_id: str) -> int | None:
        record = self.get(task_id)
        if record is None or record.done:
            return None
        if record.state == "running":
            return 0
        with _unavailable("read the queue"):
            return self.store.position(task_id, record.model)

    def cancel(self, task_id: str) -> str:
        with _unavailable("cancel the job"):
            outcome = self.store.cancel(task_id)
            if outcome == "cancelled":  # never started: its uploads are ours to delete
                record = self.store.get(task_id)
                if record is not None:
                    remove_paths(Path(p) for p in record.cleanup)
        return outcome

    def wait(self, task_id: str, timeout: float | None = None) -> JobRecord:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.get(task_id)
            if record is None:
                raise KeyError(task_id)
            if record.done:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {task_id} still {record.state} after {timeout} s")
            time.sleep(POLL_S)

    # -- state for the faces ---------------------------------------------------------------

    def workers(self) -> list[dict]:
        with _unavailable("read the workers"):
            return self.store.workers()

    def models(self) -> dict[str, dict]:
        """Every model a worker has served: name -> {"variant", "tasks"}."""
        with _unavailable("read the models"):
            return self.store.models()

    def model_state(self) -> str:
        """``ready`` when a live worker has its model loaded; else the best state seen."""
        live = [w for w in self.workers() if w["alive"]]
        states = {w.get("state") for w in live}
        for state in ("ready", "parked", "loading", "unloaded"):
            if state in states:
                return state
        return "no workers"

    def stats(self) -> dict:
        with _unavailable("read the statistics"):
            counts = self.store.counts()
            pending = self.store.pending()
            done = self.store.recent_durations("succeeded")
            failed = self.store.recent_durations("failed")
            histogram = self.store.histogram()
            workers = self.store.workers()
        return {
            "backend": "redis",
            "queue_url": redacted(self.settings.url),
            "jobs": {"total": sum(counts.values()), **counts},
            "queue_size": sum(pending.values()),
            "queue_by_model": pending,
            "queue_maxsize": self.maxsize,
            **average_fields(done, failed, self.seed_seconds),
            "durations": histogram,
            "workers": workers,
        }

    # -- repairs ---------------------------------------------------------------------------

    def reap(self, now: float | None = None) -> dict[str, int]:
        """Give back jobs that no message will deliver again: a job running on a worker that has
        been silent for twice the heartbeat timeout goes back to its queue (dramatiq normally
        did that already; a claim drops the extra message), and a queued job whose message was
        never sent (the server died, or Redis failed, in between) fails with the reason."""
        now = time.time() if now is None else now
        grace = 2 * self.settings.heartbeat_timeout_s
        adverts = {w["id"]: w for w in self.store.workers()}
        requeued = failed = 0
        suspects: dict[tuple[str, str], float] = {}
        for task_id, worker in self.store.running_owners():
            advert = adverts.get(worker)
            if advert is not None and (advert["alive"] or now - advert.get("updated", 0) < grace):
                continue
            # Silent on two passes in a row: after a long Redis outage a live worker gets one
            # pass to beat again before its job is taken for a dead worker's.
            last_beat = advert.get("updated", 0) if advert else 0
            suspects[(task_id, worker)] = last_beat
            if self._suspects.get((task_id, worker)) != last_beat:
                continue
            record = self.store.get(task_id)
            if record is not None and self.store.requeue_lost(task_id, worker):
                self.broker.enqueue(job_message(record.model, task_id))
                self.store.mark_sent(task_id)
                requeued += 1
                logger.warning(f"job {task_id}: its worker {worker} is gone; queued again")
        self._suspects = suspects
        for task_id in self.store.unsent(now - UNSENT_GRACE_S):
            if self._fail_unsent(
                task_id, "the job was never queued (the server or Redis failed); submit it again"
            ):
                failed += 1
        return {"requeued": requeued, "failed": failed}

    def _fail_unsent(self, task_id: str, reason: str) -> bool:
        return (
            self.store.finish(task_id, "api", f"api-{uuid.uuid4().hex}", error=reason, kind="queue") == "ok"
        )

    # -- retention ----------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Delete finished records older than the TTL, with their result files (one server each)."""
        if self.result_ttl_s <= 0:
            return 0
        now = time.time() if now is None else now
        taken = self.store.expire_finished(now - self.result_ttl_s)
        remove_paths(self.results_dir / task_id for task_id in taken)
        return len(taken)

    def _sweep_loop(self, interval: int) -> None:
        """Repairs every heartbeat timeout, retention every ``interval``."""
        tick = min(interval, self.settings.heartbeat_timeout_s)
        next_sweep = time.monotonic() + interval
        while not self._stop.wait(tick):
            try:
                self.reap()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + interval
                    removed = self.sweep()
                    if removed:
                        logger.info(f"retention: removed {removed} finished jobs and their files")
            except Exception as exc:  # Redis away or a bad file: try again next round
                logger.warning(f"queue repairs or retention failed: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._sweeper.join(timeout=5)
        self.client.close()


class _unavailable:
    """Redis errors as ``QueueUnavailable`` (503) naming what could not be done."""

    def __init__(self, doing: str):
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None and isinstance(exc, redis.RedisError):
            raise QueueUnavailable(
                f"could not {self.doing}: the job queue (Redis) is unavailable ({exc})"
            ) from exc
        return False
