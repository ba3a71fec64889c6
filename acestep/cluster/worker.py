"""``ClusterWorker``: one GPU's consumer of its model's queue (``acestep-worker --gpu N``).

For each message: claim the job (one start more; a job whose worker stopped twice fails with the
reason), run it on the executor into a folder of its own (``<results>/<task>/<attempt>/``),
record the outcome (a training run's: its final progress), and only then return, so dramatiq
acknowledges the message after the result is stored. With a duplicate delivery both copies may
run; the first ``finish`` decides, and the other copy deletes only its own folder, so one task id
never has two results. A heartbeat thread keeps this worker's advert (model, residency, VRAM)
alive in Redis; a control thread runs the load/unload commands an API server sends.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import dramatiq
import redis
from loguru import logger

from acestep.cluster.broker import ACTOR_NAME, QueuedMessage, make_broker, queue_name, redis_client
from acestep.cluster.executors import Executor, JobFailed
from acestep.cluster.records import training_json
from acestep.cluster.settings import MAX_STARTS, ClusterSettings, redacted
from acestep.cluster.store import JobStore
from acestep.jobs.queue import remove_paths
from acestep.training.progress import TrainingProgress

POLL_MS = 100
RETRY_CAP_S = 5.0
OTHER_ERROR_RETRIES = 60  # about five minutes at the capped delay
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
)


class ClusterWorker:
    def __init__(
        self,
        settings: ClusterSettings,
        executor: Executor,
        results_dir: Path,
        name: str,
        gpu: str | None = None,
    ):
        self.settings = settings
        self.executor = executor
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        # Unique per process: a worker restarted under the same name (compose restarts keep the
        # hostname and often the pid) must not look like the one that died holding a job.
        self.id = f"{name}-{secrets.token_hex(3)}"
        self.gpu = gpu
        self.client = redis_client(settings, retries=2)
        self.store = JobStore(self.client, settings.namespace)
        self.broker = make_broker(settings, self.client)
        self.queue = queue_name(executor.model)
        self.running: str | None = None
        self.done_count = {"succeeded": 0, "failed": 0}
        self.started = time.time()
        self._draining = threading.Event()  # stop taking jobs (the advert says so)
        self._closed = threading.Event()  # heartbeat and control threads end
        self._abandoning = False
        self._lost = False
        self._threads: list[threading.Thread] = []
        self._consumer: dramatiq.Worker | None = None

    # -- one job ---------------------------------------------------------------------------

    def handle(self, task_id: str) -> None:
        """The dramatiq actor. Returning acknowledges the message, so it returns only after the
        outcome is stored (or after it found the job decided or owned by a live worker)."""
        token = uuid.uuid4().hex
        outcome, starts = self._claim(task_id, token)
        if outcome != "run":
            logger.info(f"job {task_id}: {outcome}, nothing to run")
            self._cleanup_if_done(task_id)
            return
        folder = self.results_dir / task_id / re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.id}.{starts}")
        began = time.monotonic()
        self.running, self._lost = task_id, False
        result, error, kind = None, "", ""
        try:
            record = self._record(task_id)
            what = "training" if record.kind == "train" else record.request.task_type
            logger.info(f"job {task_id} ({what}) started, start {starts} of {MAX_STARTS}")
            result = self.executor.run(record, folder, self._reporter(task_id))
        except JobFailed as exc:
            error, kind = str(exc), exc.kind
        except Exception as exc:  # a bug must fail the job with a reason, never leave it running
            logger.exception(f"job {task_id} failed unexpectedly")
            error, kind = f"internal error: {exc}", "internal"
        finally:
            self.running = None
        seconds = time.monotonic() - began
        if self._lost:  # another worker took the job over while this one was cut off
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning(f"job {task_id}: taken over by another worker; this copy is discarded")
            return
        if self._abandoning and result is None:
            message = QueuedMessage.for_job(self.settings, self.executor.model, task_id)
            self._durably(lambda: self.store.release(task_id, self.id, message))
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning(f"job {task_id} handed back to the queue: this worker is stopping")
            return
        if result is not None:  # its files are in ``folder``, where the executor wrote them
            decided = self._durably(
                lambda: self.store.finish(task_id, self.id, token, result, duration=seconds)
            )
        else:
            decided = self._durably(
                lambda: self.store.finish(task_id, self.id, token, error=error, kind=kind, duration=seconds)
            )
        if decided == "ok":
            state = "succeeded" if result is not None else "failed"
            self.done_count[state] += 1
            logger.info(
                f"job {task_id} {state} in {seconds:.2f} s" + (f" ({kind}): {error}" if error else "")
            )
        if decided != "ok" or result is None:  # another copy's outcome stands, or nothing to keep
            shutil.rmtree(folder, ignore_errors=True)
        self._cleanup_if_done(task_id)

    def _record(self, task_id: str):
        try:
            record = self._durably(lambda: self.store.get(task_id))
        except redis.RedisError:
            raise
        except Exception as exc:  # e.g. a request from a newer acestep than this worker's
            raise JobFailed(
                f"this worker cannot read the job (acestep versions differ?): {exc}", "input"
            ) from None
        if record is None:
            raise JobFailed("the job's record is gone", "internal")
        return record

    def _claim(self, task_id: str, token: str) -> tuple[str, int]:
        state, owner = self._durably(lambda: self.store.owner(task_id))
        expected = ""
        if state == "running" and owner != self.id:
            # Delivered again while the job runs: a duplicate if its worker lives, else a takeover.
            # After a Redis restart a live worker needs a beat or two to show itself again.
            deadline = time.monotonic() + 2 * self.settings.heartbeat_interval_s + 1
            while time.monotonic() < deadline:
                if self._durably(lambda: self.store.alive(owner or "")):
                    return "duplicate", 0
                time.sleep(0.2)
            expected = owner or ""
        return self._durably(lambda: self.store.claim(task_id, self.id, MAX_STARTS, token, expected))

    def _reporter(self, task_id: str):
        def report(stage: str, fraction: float, training: TrainingProgress | None = None) -> bool:
            try:
                stored = training_json(training) if training is not None else ""
                answer = self.store.progress(task_id, self.id, stage, fraction, stored)
            except redis.RedisError as exc:  # progress is advisory; the job goes on
                logger.warning(f"job {task_id}: progress not stored ({exc})")
                return False
            if answer == -1:  # no longer ours: stop spending the GPU on it
                self._lost = True
            # Stopping past the stop timeout: asked at every report, so it cannot be missed.
            return answer != 0 or self._abandoning

        return report

    def _durably(self, call):
        """Until Redis answers: what a finished job holds must be stored before it is acked.
        The transitions are idempotent per delivery token, so a retry after a lost reply is safe.
        A connection lost, a server loading its AOF or a read-only replica during failover is
        waited out; any other Redis error (out of memory, a disk error) is retried for a few
        minutes, then raised."""
        delay, other_errors = 0.2, 0
        while True:
            try:
                return call()
            except TRANSIENT as exc:
                logger.warning(f"Redis unavailable ({exc}); retrying in {delay:.1f} s")
            except redis.RedisError as exc:
                other_errors += 1
                if other_errors > OTHER_ERROR_RETRIES:
                    raise
                logger.error(f"Redis refused a write ({exc}); retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(RETRY_CAP_S, delay * 2)

    def _cleanup_if_done(self, task_id: str) -> None:
        """Delete the job's uploads once it is decided (by whichever delivery)."""
        try:
            state, _ = self.store.owner(task_id)
            if state in ("succeeded", "failed"):
                raw = self.client.hget(self.store.key("job", task_id), "cleanup")
                remove_paths(Path(p) for p in json.loads(raw or "[]"))
        except Exception as exc:  # the next delivery, or retention, cleans up
            logger.warning(f"job {task_id}: uploads not cleaned up ({exc})")

    # -- liveness and control ----------------------------------------------------------------

    def advert(self) -> dict:
        return {
            "name": self.name,
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
            "stopping": self._draining.is_set(),
        } | self.executor.status()

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(self.settings.heartbeat_interval_s):
            self._beat()

    def _beat(self) -> None:
        try:
            self.store.advertise(self.id, self.advert(), self.settings.heartbeat_timeout_s)
        except Exception as exc:  # Redis away: the next beat tries again
            logger.warning(f"heartbeat not stored: {exc}")

    def _control_loop(self) -> None:
        key = self.store.key("control", self.id)
        while not self._closed.is_set():
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
                elif command["action"] == "lora_load":
                    reply = {"ok": True, "report": self.executor.load_lora(command["names"])}
                elif command["action"] == "lora_unload":
                    reply = {"ok": True, "report": self.executor.unload_lora(command.get("names"))}
                else:
                    reply = {"ok": True, "report": self.executor.unload(command.get("level", "free"))}
            except Exception as exc:  # the caller gets the reason
                reply = {"ok": False, "error": str(exc)}
            self._beat()
            reply_key = self.store.key("reply", command["id"])
            try:
                self.client.rpush(reply_key, json.dumps(reply | {"worker": self.id}))
                self.client.expire(reply_key, 60)
            except redis.RedisError as exc:
                logger.warning(f"control reply not stored: {exc}")

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
        """Stop taking jobs; let the running one finish for the stop timeout, then hand it back.
        The heartbeat goes on meanwhile, so the job is not taken for a dead worker's."""
        self._draining.set()
        self._beat()
        timer = threading.Timer(self.settings.stop_timeout_s, self._abandon)
        timer.daemon = True
        timer.start()
        if self._consumer is not None:
            self._consumer.stop(timeout=(self.settings.stop_timeout_s + 30) * 1000)
        timer.cancel()
        self._closed.set()
        for thread in self._threads:
            thread.join(timeout=5)
        try:
            self.store.retire(self.id, self.advert())
        except redis.RedisError as exc:  # Redis away: the liveness key expires by itself
            logger.warning(f"could not mark this worker offline: {exc}")
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
