"""``ClusterWorker``: one GPU's consumer of its model's queue (``acestep-worker --gpu N``).

For each message: claim the job (one start more; a job whose worker stopped twice fails with
the reason), run it on the executor in a staging folder, move the folder into place (an atomic
rename: with a duplicate delivery, the first finished copy wins and the other is discarded),
record the outcome, and only then return, so dramatiq acknowledges the message after the result
is stored. A heartbeat thread keeps this worker's advert (model, residency, VRAM) alive in Redis;
a control thread runs the load/unload commands an API server sends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import dramatiq
import redis
from loguru import logger

from acestep.cluster.broker import ACTOR_NAME, job_message, make_broker, queue_name, redis_client
from acestep.cluster.executors import Executor, JobFailed
from acestep.cluster.settings import MAX_STARTS, ClusterSettings, redacted
from acestep.cluster.store import JobStore
from acestep.engine.request import GenerationResult
from acestep.serving.jobs import remove_paths

STAGING = ".staging"
POLL_MS = 100


class ClusterWorker:
    def __init__(
        self,
        settings: ClusterSettings,
        executor: Executor,
        results_dir: Path,
        worker_id: str,
        gpu: str | None = None,
    ):
        self.settings = settings
        self.executor = executor
        self.results_dir = Path(results_dir)
        (self.results_dir / STAGING).mkdir(parents=True, exist_ok=True)
        self.id = worker_id
        self.gpu = gpu
        # Until Redis returns: a finished job must be recorded before it is acknowledged.
        self.client = redis_client(settings, retries=-1)
        self.store = JobStore(self.client, settings.namespace)
        self.broker = make_broker(settings, self.client)
        self.queue = queue_name(executor.model)
        self.running: str | None = None
        self.done_count = {"succeeded": 0, "failed": 0}
        self.started = time.time()
        self._stopping = threading.Event()
        self._abandoning = False
        self._threads: list[threading.Thread] = []
        self._consumer: dramatiq.Worker | None = None

    # -- one job ---------------------------------------------------------------------------

    def handle(self, task_id: str) -> None:
        """The dramatiq actor. Returning acknowledges the message, so it returns only after the
        outcome is stored (or after it found the job already decided)."""
        outcome, starts = self._claim(task_id)
        if outcome != "run":
            logger.info(f"job {task_id}: {outcome}, nothing to run")
            self._cleanup_if_done(task_id)
            return
        record = self.store.get(task_id)
        staging = self.results_dir / STAGING / f"{task_id}.{self.id}.{starts}"
        began = time.monotonic()
        self.running = task_id
        logger.info(f"job {task_id} ({record.request.task_type}) started, start {starts} of {MAX_STARTS}")
        try:
            result = self.executor.run(record, staging, self._reporter(task_id))
        except JobFailed as exc:
            if self._abandoning:
                self._release(task_id)
                return
            self._finish(task_id, error=str(exc), kind=exc.kind, seconds=time.monotonic() - began)
        except Exception as exc:  # a bug must fail the job with a reason, never leave it running
            logger.exception(f"job {task_id} failed unexpectedly")
            self._finish(
                task_id, error=f"internal error: {exc}", kind="internal", seconds=time.monotonic() - began
            )
        else:
            self._publish(task_id, staging, result, time.monotonic() - began)
        finally:
            self.running = None
            shutil.rmtree(staging, ignore_errors=True)
        self._cleanup_if_done(task_id)

    def _claim(self, task_id: str) -> tuple[str, int]:
        record = self.store.get(task_id)
        expected = ""
        if record is not None and record.state == "running" and record.worker != self.id:
            # Delivered again while the job runs: a duplicate if its worker lives, else a takeover.
            # After a Redis restart a live worker needs a beat or two to show itself again.
            deadline = time.monotonic() + 2 * self.settings.heartbeat_interval_s + 1
            while time.monotonic() < deadline:
                if self.store.alive(record.worker or ""):
                    return "duplicate", 0
                time.sleep(0.2)
            expected = record.worker or ""
        return self.store.claim(task_id, self.id, MAX_STARTS, expected)

    def _reporter(self, task_id: str):
        def report(stage: str, fraction: float) -> bool:
            try:
                return self.store.progress(task_id, self.id, stage, fraction) == 1
            except redis.RedisError as exc:  # progress is advisory; the job goes on
                logger.warning(f"job {task_id}: progress not stored ({exc})")
                return False

        return report

    def _publish(self, task_id: str, staging: Path, result: GenerationResult, seconds: float) -> None:
        final = self.results_dir / task_id
        if not self._move_into_place(task_id, staging, final, seconds):
            return
        moved = result.model_copy(
            update={
                "items": [i.model_copy(update={"path": str(final / Path(i.path).name)}) for i in result.items]
            }
        )
        if self.store.finish(task_id, self.id, result=moved, duration=seconds) == "ok":
            self.done_count["succeeded"] += 1
            logger.info(f"job {task_id} succeeded in {seconds:.2f} s")
        else:  # decided meanwhile (e.g. cancelled or failed by a worker that took it over)
            shutil.rmtree(final, ignore_errors=True)

    def _move_into_place(self, task_id: str, staging: Path, final: Path, seconds: float) -> bool:
        """Rename the staging folder to the task's folder: atomic, and refused when another
        delivery's result is already there. That copy stands once recorded; an orphan (its worker
        died between the rename and the record) is replaced."""
        for _ in range(2):
            try:
                staging.rename(final)
                return True
            except OSError as exc:
                if not final.exists():
                    self._finish(
                        task_id,
                        f"could not store the result in {self.results_dir}: {exc}",
                        "internal",
                        seconds,
                    )
                    return False
            time.sleep(1.0)  # the other copy may be between its rename and its record
            record = self.store.get(task_id)
            if record is None or record.done:
                logger.warning(f"job {task_id}: another delivery's result is stored; this copy is discarded")
                return False
            shutil.rmtree(final, ignore_errors=True)
        self._finish(
            task_id, f"could not store the result in {final}: the folder stays taken", "internal", seconds
        )
        return False

    def _finish(self, task_id: str, error: str, kind: str, seconds: float) -> None:
        if self.store.finish(task_id, self.id, error=error, kind=kind, duration=seconds) == "ok":
            self.done_count["failed"] += 1
            logger.info(f"job {task_id} failed ({kind}): {error}")

    def _release(self, task_id: str) -> None:
        """Stopping mid-job: hand the job back (queued, this start not counted) and send it again."""
        self.store.release(task_id, self.id)
        self.broker.enqueue(job_message(self.executor.model, task_id))
        logger.warning(f"job {task_id} handed back to the queue: this worker is stopping")

    def _cleanup_if_done(self, task_id: str) -> None:
        record = self.store.get(task_id)
        if record is not None and record.done:
            remove_paths(Path(p) for p in record.cleanup)

    # -- liveness and control ----------------------------------------------------------------

    def advert(self) -> dict:
        return {
            "model": self.executor.model,
            "variant": self.executor.variant,
            "tasks": self.executor.tasks,
            "host": socket.gethostname(),
            "gpu": self.gpu,
            "pid": os.getpid(),
            "queue": self.queue,
            "running": self.running,
            "jobs_succeeded": self.done_count["succeeded"],
            "jobs_failed": self.done_count["failed"],
            "started": self.started,
            "stopping": self._stopping.is_set(),
        } | self.executor.status()

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.settings.heartbeat_interval_s):
            self._beat()

    def _beat(self) -> None:
        try:
            self.store.advertise(self.id, self.advert(), self.settings.heartbeat_timeout_s)
        except Exception as exc:  # Redis away: the next beat tries again
            logger.warning(f"heartbeat not stored: {exc}")

    def _control_loop(self) -> None:
        key = self.store.key("control", self.id)
        while not self._stopping.is_set():
            try:
                item = self.client.blpop([key], timeout=1)
            except redis.RedisError:
                time.sleep(1)
                continue
            if item is None:
                continue
            command = json.loads(item[1])
            try:
                if command["action"] == "load":
                    reply = {"ok": True, "report": self.executor.load()}
                else:
                    reply = {"ok": True, "report": self.executor.unload(command.get("level", "free"))}
            except Exception as exc:  # the caller gets the reason
                reply = {"ok": False, "error": str(exc)}
            self._beat()
            reply_key = self.store.key("reply", command["id"])
            self.client.rpush(reply_key, json.dumps(reply | {"worker": self.id}))
            self.client.expire(reply_key, 60)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._beat()
        dramatiq.Actor(
            self.handle,
            broker=self.broker,
            actor_name=ACTOR_NAME,
            queue_name=self.queue,
            priority=0,
            options={},
        )
        # worker_timeout caps the consumer's idle back-off: after a job it fetches the next one
        # within 0.1 s (polling Redis ten times a second while idle is cheap).
        self._consumer = dramatiq.Worker(
            self.broker, queues={self.queue}, worker_threads=1, worker_timeout=POLL_MS
        )
        self._consumer.queue_prefetch = 1  # take one job at a time; the others stay for idle workers
        self._consumer.start()
        for target in (self._heartbeat_loop, self._control_loop):
            thread = threading.Thread(target=target, name=f"acestep-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            f"acestep-worker {self.id}: model {self.executor.model} ({self.executor.variant}) on queue "
            f"{self.queue} at {redacted(self.settings.url)}"
        )

    def stop(self) -> None:
        """Stop taking jobs; let the running one finish for the stop timeout, then hand it back."""
        self._stopping.set()
        timer = threading.Timer(self.settings.stop_timeout_s, self._abandon)
        timer.daemon = True
        timer.start()
        if self._consumer is not None:
            self._consumer.stop(timeout=(self.settings.stop_timeout_s + 30) * 1000)
        timer.cancel()
        for thread in self._threads:
            thread.join(timeout=5)
        try:
            self.store.retire(self.id, self.advert())
        except redis.RedisError:
            pass
        self.executor.close()
        self.client.close()
        logger.info(f"acestep-worker {self.id} stopped")

    def _abandon(self) -> None:
        if self.running is not None:
            logger.warning(f"stop timeout: handing job {self.running} back")
            self._abandoning = True
            self.executor.cancel()

    def serve_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        self.stop()
