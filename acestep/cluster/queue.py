"""``RedisJobQueue``: the job queue interface for API servers, over Redis.

A server keeps no job state of its own: any number of them behind a load balancer see the same
records, and any of them serves a result, since audio lives in the shared results directory
(``ACESTEP_OUTPUT_DIR`` on storage every server and worker mounts at the same path).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from loguru import logger

from acestep.cluster.broker import QueuedMessage, redis_client
from acestep.cluster.records import JobRecord
from acestep.cluster.routing import choose_model, choose_training_model
from acestep.cluster.settings import ClusterSettings, redacted
from acestep.cluster.store import JobStore
from acestep.jobs.queue import QueueFull, QueueUnavailable, average_fields, remove_paths
from acestep.jobs.retention import Retention, input_paths
from acestep.lora.selection import LoraSelection
from acestep.request import GenerationRequest
from acestep.training.progress import TrainingProgress
from acestep.training.request import TrainingRequest
from acestep.worker.job import JobState

POLL_S = 0.2
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
        repairs: bool = True,
        loras: LoraSelection | None = None,
        uploads_dir: Path | None = None,
    ):
        self.settings = settings
        self.loras = loras
        self.client = redis_client(settings, retries=API_RETRIES)
        self.store = JobStore(self.client, settings.namespace)
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.default_model = default_model
        self.default_info = {"variant": default_variant, "tasks": sorted(default_tasks)}
        self.maxsize = maxsize
        self.result_ttl_s = result_ttl_s
        self.retention = Retention.from_env(self.results_dir, result_ttl_s, uploads_dir)
        self.seed_seconds = seed_seconds
        self._suspects: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, args=(cleanup_interval_s,), name="acestep-retention", daemon=True
        )
        if repairs:  # off only in tests that call reap() and sweep() themselves
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
        with redis_unavailable("queue the job"):
            models = {self.default_model: self.default_info} | self.store.models()
            chosen, warnings = choose_model(
                request.effective_task, model, self.default_model, models, self.store.workers()
            )
            if self.loras is not None:  # adapters checked against the chosen model; the default is in Redis
                request, notes = self.loras.admit(request, models[chosen]["variant"])
                warnings += notes
            self._require_room()
            record = JobRecord(
                id=str(uuid.uuid4()),
                request=request,
                model=chosen,
                created=time.time(),
                lm_only=lm_only,
                uses_lm=uses_lm,
                cleanup=[str(p) for p in cleanup],
            )
            # The record and its message in one script: both or neither.
            self.store.create(record, QueuedMessage.for_job(self.settings, chosen, record.id))
        record.warnings = warnings
        return record

    def submit_training(self, request: TrainingRequest, dataset: str, model: str | None = None) -> JobRecord:
        """Queue a checked training run (``acestep/jobs/training.py``) for the workers of ``model``
        (None: the server's default). The dataset path and the training and LoRA folders must be
        the same on this server and the workers (a shared volume)."""
        with redis_unavailable("queue the training run"):
            models = {self.default_model: self.default_info} | self.store.models()
            chosen = choose_training_model(model, self.default_model, models)
            self._require_room()
            record = JobRecord(
                id=str(uuid.uuid4()),
                request=request,
                model=chosen,
                created=time.time(),
                dataset=dataset,
                training=TrainingProgress(),
            )
            self.store.create(record, QueuedMessage.for_job(self.settings, chosen, record.id))
        return record

    def _require_room(self) -> None:
        depth = sum(self.store.pending().values())
        if depth >= self.maxsize:
            recent = self.store.recent_durations("succeeded")
            average = sum(recent) / len(recent) if recent else self.seed_seconds
            raise QueueFull(self.maxsize, max(1, int(average * depth / 2) or 1))

    def get(self, task_id: str) -> JobRecord | None:
        with redis_unavailable("read the job"):
            record = self.store.get(task_id)
            running = record is not None and record.state == JobState.RUNNING
            if running and not self.store.alive(record.worker or ""):
                # Its worker stopped; the broker gives the job to another worker (or fails it after
                # a second stop). Shown as waiting, which is what it does now.
                record.state, record.stage = JobState.QUEUED, f"requeued: worker {record.worker} stopped"
        return record

    def position(self, task_id: str) -> int | None:
        record = self.get(task_id)
        if record is None or record.done:
            return None
        if record.state == "running":
            return 0
        with redis_unavailable("read the queue"):
            return self.store.position(task_id, record.model)

    def cancel(self, task_id: str) -> str:
        with redis_unavailable("cancel the job"):
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
        with redis_unavailable("read the workers"):
            return self.store.workers()

    def models(self) -> dict[str, dict]:
        """Every model a worker has served: name -> {"variant", "tasks"}."""
        with redis_unavailable("read the models"):
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
        with redis_unavailable("read the statistics"):
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

    def reap(self) -> int:
        """Put back on its queue, with a new message, a job running on a worker that has been
        silent (no liveness key, no new advert) for a heartbeat timeout of this server's own
        clock after it was first seen silent. dramatiq has usually redelivered it already (a
        claim then drops the extra message); this covers a message that was lost, e.g. acked as
        a duplicate after a long Redis outage. A live worker gets that long to beat again."""
        adverts = {w["id"]: w for w in self.store.workers()}
        now = time.monotonic()
        suspects: dict[tuple[str, str], tuple[float, float]] = {}
        requeued = 0
        for task_id, worker in self.store.running_owners():
            advert = adverts.get(worker)
            if (advert is not None and advert["alive"]) or self.store.alive(worker):
                continue
            last_beat = advert.get("updated", 0.0) if advert else 0.0
            seen = self._suspects.get((task_id, worker))
            first_seen = seen[1] if seen is not None and seen[0] == last_beat else now
            suspects[(task_id, worker)] = (last_beat, first_seen)
            if now - first_seen < self.settings.heartbeat_timeout_s:
                continue
            try:
                model = self.store.model_of(task_id)
                message = QueuedMessage.for_job(self.settings, model or self.default_model, task_id)
                if self.store.requeue_lost(task_id, worker, message):
                    requeued += 1
                    logger.warning(f"job {task_id}: its worker {worker} is gone; queued again")
            except redis.RedisError as exc:  # the next pass tries again
                logger.warning(f"job {task_id}: could not requeue ({exc})")
        self._suspects = suspects
        return requeued

    # -- retention ----------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Delete finished records older than the TTL, with their result files (one server each)."""
        if self.result_ttl_s <= 0:
            return 0
        now = time.time() if now is None else now
        taken = self.store.expire_finished(now - self.result_ttl_s)
        remove_paths(self.results_dir / task_id for task_id in taken)
        return len(taken)

    def sweep_files(self, now: float | None = None) -> int:
        """Retention by age of the shared folders (see :mod:`acestep.jobs.retention`); the
        queued and running jobs of every server keep their inputs and result folders."""
        with redis_unavailable("read the live jobs"):
            ids = {
                i.decode() if isinstance(i, bytes) else i
                for state in ("queued", "running")
                for i in self.client.smembers(self.store.key("jobs", state))
            }
            records = [r for r in map(self.store.get, sorted(ids)) if r is not None]
        live = {Path(p).resolve() for r in records for p in r.cleanup}
        live |= {path for r in records if r.kind == "generate" for path in input_paths(r.request)}
        return self.retention.sweep(ids, live, now)

    def _sweep_loop(self, interval: int) -> None:
        """Repairs every heartbeat timeout, retention at start and every ``interval``."""
        tick = min(interval, self.settings.heartbeat_timeout_s)
        next_sweep = time.monotonic()
        while not self._stop.wait(tick):
            try:
                self.reap()
            except Exception as exc:  # Redis away: try again next round
                logger.warning(f"queue repairs failed: {exc}")
            if time.monotonic() < next_sweep:
                continue
            next_sweep = time.monotonic() + interval
            try:
                removed = self.sweep()
                if removed:
                    logger.info(f"retention: removed {removed} finished jobs and their files")
                swept = self.sweep_files()
                if swept:
                    logger.info(f"retention: removed {swept} old result, upload and cache files")
            except Exception as exc:  # Redis away or a bad file: try again next round
                logger.warning(f"retention sweep failed: {exc}")

    def close(self) -> None:
        self._stop.set()
        if self._sweeper.is_alive():
            self._sweeper.join(timeout=5)
        self.client.close()


@contextmanager
def redis_unavailable(doing: str) -> Iterator[None]:
    """Redis errors as ``QueueUnavailable`` (503) naming what could not be done."""
    try:
        yield
    except redis.RedisError as exc:
        raise QueueUnavailable(f"could not {doing}: the job queue (Redis) is unavailable ({exc})") from exc
