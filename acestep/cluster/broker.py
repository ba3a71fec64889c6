"""Delivery on dramatiq's Redis broker: one queue per DiT model, one message per job.

A message carries only the task id; the job itself is the record in :mod:`acestep.cluster.store`.
The store writes a job's record and its message in one Lua script (``QueuedMessage`` gives it the
message as dramatiq's ``enqueue`` would write it: the payload under its id in ``<queue>.msgs`` and
the id pushed on the ``<queue>`` list), so a job is never recorded without its message, or sent
without its record, even when a server dies between the two.
dramatiq gives the at-least-once delivery: a worker holds a message unacknowledged while it runs
the job and acknowledges it after the result is stored; a worker whose heartbeat stops for
``ACESTEP_WORKER_HEARTBEAT_TIMEOUT`` has its unacknowledged message put back on the queue by the
next live consumer. Its consumer threads keep heartbeating while a long job runs, so the timeout
does not depend on how long generation takes.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import redis
from dramatiq import Message
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from acestep.cluster.settings import ClusterSettings

ACTOR_NAME = "acestep_generate"


def queue_name(model: str) -> str:
    """dramatiq's queue name for a model folder (letters, digits and ``._-`` only)."""
    return "model_" + re.sub(r"[^A-Za-z0-9._-]", "_", model)


def redis_client(settings: ClusterSettings, retries: int) -> redis.Redis:
    """A client that retries a dropped connection ``retries`` times (-1: until Redis returns).

    API servers retry briefly and answer 503 after; workers wait for Redis, since what they hold
    (a finished job) must be stored before it is acknowledged.
    """
    return redis.Redis.from_url(
        settings.url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def make_broker(settings: ClusterSettings, client: redis.Redis) -> RedisBroker:
    # No default middleware: no automatic retries (a failed job is a result, not a redelivery) and
    # no time limit (a 10-minute lego on a T4 is normal). Maintenance (moving a dead worker's
    # messages back to their queue; it runs KEYS for each dead broker) runs on one broker call in
    # ten: an idle worker makes about twenty calls a second, so a dead worker's job moves on
    # within a second of its heartbeat timeout, at a tenth of the cost of every call.
    return RedisBroker(
        client=client,
        namespace=f"{settings.namespace}-dq",
        middleware=[],
        heartbeat_timeout=settings.heartbeat_timeout_s * 1000,
        maintenance_chance=MAINTENANCE_SCALE // 10,
    )


def job_message(model: str, task_id: str) -> Message:
    return Message(
        queue_name=queue_name(model), actor_name=ACTOR_NAME, args=(task_id,), kwargs={}, options={}
    )


@dataclass(frozen=True)
class QueuedMessage:
    """A job's message, laid out as dramatiq's Redis broker stores an enqueued one."""

    list_key: str
    payloads_key: str
    message_id: str
    payload: bytes

    @classmethod
    def for_job(cls, settings: ClusterSettings, model: str, task_id: str) -> QueuedMessage:
        message_id = str(uuid.uuid4())
        message = job_message(model, task_id).copy(options={"redis_message_id": message_id})
        queue_key = f"{settings.namespace}-dq:{queue_name(model)}"
        return cls(queue_key, f"{queue_key}.msgs", message_id, message.encode())

    def args(self) -> list:
        return [self.list_key, self.payloads_key, self.message_id, self.payload]
