"""``JobStore``: the Redis keys of the cluster and the atomic transitions between job states.

Every state change is one Lua script, so two API servers and any number of workers never see a
half-written job: a job is created queued, claimed by one worker at a time (``claim`` counts the
starts and fails a job whose worker stopped twice), finished once (the first ``finish`` wins, a
later one is told ``done``), and cancelled only while it is not finished. ``claim`` and
``finish`` carry the delivery's token, so a call replayed after a lost reply (a Redis restart
between the write and the answer) gets the same answer instead of a wrong one.

Keys (``ns`` is ``ACESTEP_QUEUE_NAMESPACE``): ``ns:job:<id>`` hash; ``ns:jobs:<state>`` sets;
``ns:pending:<model>`` sorted by submission (``ns:pending_models`` names them); ``ns:finished``
sorted by end time (retention); ``ns:durations:<state>`` recent job times; ``ns:duration_hist``
histogram counters; ``ns:workers`` hash of the last advert of each worker and
``ns:alive:<worker>`` its liveness key (expires after the heartbeat timeout); ``ns:models`` hash of
the models workers serve.
"""

from __future__ import annotations

import json
import time

import redis

from acestep.cluster.broker import QueuedMessage
from acestep.cluster.records import JobRecord, result_json, training_json
from acestep.jobs.queue import DURATION_BUCKETS
from acestep.result import GenerationResult
from acestep.training.progress import TrainingProgress
from acestep.worker.job import JobState

STATES = tuple(state.value for state in JobState)  # the sets ns:jobs:<state>
RECENT_DURATIONS = 50
WORKERS_FORGOTTEN_AFTER_S = 86400  # an offline worker's last advert is shown for a day

_FINALIZE = """
local function finalize(ns, id, state, now, err, kind)
  local job = ns .. ':job:' .. id
  local prev = redis.call('HGET', job, 'state')
  redis.call('HSET', job, 'state', state, 'finished', now)
  if state == 'succeeded' then
    redis.call('HSET', job, 'stage', 'done', 'progress', '1')
  else
    redis.call('HSET', job, 'stage', 'failed', 'error', err, 'error_kind', kind)
  end
  redis.call('SREM', ns .. ':jobs:' .. prev, id)
  redis.call('SADD', ns .. ':jobs:' .. state, id)
  redis.call('ZREM', ns .. ':pending:' .. redis.call('HGET', job, 'model'), id)
  redis.call('ZADD', ns .. ':finished', now, id)
  redis.call('HDEL', job, 'cancel_requested')
end
"""

# The job's message, written as dramatiq's enqueue writes it (its payload, then its id on the list).
_SEND = """
local function send(list_key, payloads_key, message_id, payload)
  redis.call('HSET', payloads_key, message_id, payload)
  redis.call('RPUSH', list_key, message_id)
end
"""

_CREATE = (
    _SEND
    + """
local ns, id, model = ARGV[1], ARGV[2], ARGV[3]
local job = ns .. ':job:' .. id
if redis.call('EXISTS', job) == 1 then return 0 end
send(ARGV[4], ARGV[5], ARGV[6], ARGV[7])
redis.call('HSET', job, 'state', 'queued', 'stage', 'queued', 'progress', '0', 'attempts', '0',
           'model', model, unpack(ARGV, 8))
redis.call('SADD', ns .. ':jobs:queued', id)
redis.call('SADD', ns .. ':pending_models', model)
redis.call('ZADD', ns .. ':pending:' .. model, redis.call('INCR', ns .. ':seq'), id)
return 1
"""
)

_CLAIM = (
    _FINALIZE
    + """
local ns, id, worker, now, max_starts, expected, token = unpack(ARGV, 1, 7)
local job = ns .. ':job:' .. id
local state = redis.call('HGET', job, 'state')
if not state then return {'missing'} end
if state == 'running' and redis.call('HGET', job, 'claim') == token then
  return {'run', redis.call('HGET', job, 'attempts')}  -- this very claim, replayed
end
if state == 'succeeded' or state == 'failed' then return {'done'} end
if state == 'running' and redis.call('HGET', job, 'worker') ~= expected then return {'raced'} end
if redis.call('HGET', job, 'cancel_requested') == '1' then
  finalize(ns, id, 'failed', now, 'cancelled by request', 'cancelled')
  return {'cancelled'}
end
local starts = redis.call('HINCRBY', job, 'attempts', 1)
if starts > tonumber(max_starts) then
  local last = redis.call('HGET', job, 'worker') or 'unknown'
  finalize(ns, id, 'failed', now,
           'the worker running this job stopped (killed or crashed) ' .. (starts - 1) ..
           ' times, last ' .. last .. '; the job is not retried again', 'worker_lost')
  return {'exhausted'}
end
redis.call('HSET', job, 'state', 'running', 'stage', 'starting', 'progress', '0', 'worker', worker,
           'started', now, 'claim', token)
redis.call('SREM', ns .. ':jobs:' .. state, id)
redis.call('SADD', ns .. ':jobs:running', id)
redis.call('ZREM', ns .. ':pending:' .. redis.call('HGET', job, 'model'), id)
return {'run', tostring(starts)}
"""
)

_PROGRESS = """
local job = ARGV[1] .. ':job:' .. ARGV[2]
if redis.call('HGET', job, 'state') ~= 'running' or redis.call('HGET', job, 'worker') ~= ARGV[3] then
  return -1
end
redis.call('HSET', job, 'stage', ARGV[4], 'progress', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', job, 'training', ARGV[6]) end
if redis.call('HGET', job, 'cancel_requested') == '1' then return 1 end
return 0
"""

_FINISH = (
    _FINALIZE
    + """
local ns, id, worker, state, now, payload, kind, duration, token, field = unpack(ARGV, 1, 10)
local job = ns .. ':job:' .. id
local current = redis.call('HGET', job, 'state')
if not current then return 'missing' end
if current == 'succeeded' or current == 'failed' then
  if redis.call('HGET', job, 'decided_by') == token then return 'ok' end  -- replayed
  return 'done'
end
redis.call('HSET', job, 'decided_by', token)
if state == 'succeeded' then
  redis.call('HSET', job, field, payload)
  finalize(ns, id, 'succeeded', now, '', '')
else
  finalize(ns, id, 'failed', now, payload, kind)
end
redis.call('HSET', job, 'worker', worker)
local recent = ns .. ':durations:' .. state
redis.call('LPUSH', recent, duration)
redis.call('LTRIM', recent, 0, tonumber(ARGV[11]) - 1)
local hist = ns .. ':duration_hist'
for i = 12, #ARGV do redis.call('HINCRBY', hist, ARGV[i], 1) end
redis.call('HINCRBYFLOAT', hist, 'sum', duration)
redis.call('HINCRBY', hist, 'count', 1)
return 'ok'
"""
)

# Back to queued: a stopping worker hands its job back (its start not counted), or an API server
# requeues the job of a worker that is long dead (its start counted) when no message is left.
_REQUEUE = (
    _SEND
    + """
local ns, id, worker, uncount = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local job = ns .. ':job:' .. id
if redis.call('HGET', job, 'state') ~= 'running' or redis.call('HGET', job, 'worker') ~= worker then
  return 0
end
send(ARGV[5], ARGV[6], ARGV[7], ARGV[8])
redis.call('HSET', job, 'state', 'queued', 'stage', 'queued', 'progress', '0')
redis.call('HDEL', job, 'claim')
if uncount == '1' then redis.call('HINCRBY', job, 'attempts', -1) end
redis.call('SREM', ns .. ':jobs:running', id)
redis.call('SADD', ns .. ':jobs:queued', id)
local model = redis.call('HGET', job, 'model')
redis.call('ZADD', ns .. ':pending:' .. model, redis.call('INCR', ns .. ':seq'), id)
return 1
"""
)

_CANCEL = (
    _FINALIZE
    + """
local ns, id, now = ARGV[1], ARGV[2], ARGV[3]
local job = ns .. ':job:' .. id
local state = redis.call('HGET', job, 'state')
if not state then return 'unknown' end
if state == 'succeeded' or state == 'failed' then return 'finished' end
if state == 'queued' then
  finalize(ns, id, 'failed', now, 'cancelled by request', 'cancelled')
  return 'cancelled'
end
redis.call('HSET', job, 'cancel_requested', '1')
return 'cancelling'
"""
)


class JobStore:
    def __init__(self, client: redis.Redis, namespace: str = "acestep"):
        self.client = client
        self.ns = namespace
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._progress = client.register_script(_PROGRESS)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._requeue = client.register_script(_REQUEUE)

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    # -- transitions -----------------------------------------------------------------------

    def create(self, record: JobRecord, message: QueuedMessage) -> bool:
        """The record and its message, both or neither (a replay after a lost reply adds nothing)."""
        flat = [item for pair in record.new_fields().items() for item in pair]
        return bool(self._create(args=[self.ns, record.id, record.model, *message.args(), *flat]))

    def claim(
        self, task_id: str, worker: str, max_starts: int, token: str, expected: str = ""
    ) -> tuple[str, int]:
        """``run`` (with the start count), ``done``, ``cancelled``, ``exhausted``, ``raced`` or
        ``missing``; ``expected`` is the dead worker a restart takes the job over from."""
        reply = self._claim(args=[self.ns, task_id, worker, repr(time.time()), max_starts, expected, token])
        outcome = _text(reply[0])
        return outcome, int(reply[1]) if len(reply) > 1 else 0

    def progress(self, task_id: str, worker: str, stage: str, fraction: float, training: str = "") -> int:
        """1 when a cancel was asked, 0 otherwise, -1 when this worker no longer owns the job;
        ``training``: a training run's progress (JSON), stored with the stage."""
        args = [self.ns, task_id, worker, stage, repr(float(fraction)), training]
        return int(self._progress(args=args))

    def finish(
        self,
        task_id: str,
        worker: str,
        token: str,
        result: GenerationResult | TrainingProgress | None = None,
        error: str = "",
        kind: str = "",
        duration: float = 0.0,
    ) -> str:
        """``ok`` when this call decided the outcome, ``done`` when another one already had. A
        training run's outcome is its final ``TrainingProgress`` (stored as ``training``)."""
        state = "succeeded" if result is not None else "failed"
        trained = isinstance(result, TrainingProgress)
        if result is None:
            payload = error
        else:
            payload = training_json(result) if trained else result_json(result)
        buckets = [f"le:{b:g}" for b in DURATION_BUCKETS if duration <= b]
        args = [
            self.ns,
            task_id,
            worker,
            state,
            repr(time.time()),
            payload,
            kind or "",
            repr(duration),
            token,
            "training" if trained else "result",
        ]
        return _text(self._finish(args=[*args, RECENT_DURATIONS, *buckets]))

    def release(self, task_id: str, worker: str, message: QueuedMessage) -> bool:
        """A stopping worker hands its running job back with a new message; that start not counted."""
        return bool(self._requeue(args=[self.ns, task_id, worker, "1", *message.args()]))

    def requeue_lost(self, task_id: str, dead_worker: str, message: QueuedMessage) -> bool:
        """A dead worker's job, queued again with a new message (its start stays counted)."""
        return bool(self._requeue(args=[self.ns, task_id, dead_worker, "0", *message.args()]))

    def running_owners(self) -> list[tuple[str, str]]:
        """(task id, worker) of every running job."""
        ids = [_text(i) for i in self.client.smembers(self.key("jobs", "running"))]
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(self.key("job", task_id), "worker")
        return [(i, _text(w)) for i, w in zip(ids, pipe.execute(), strict=True) if w is not None]

    def cancel(self, task_id: str) -> str:
        return _text(self._cancel(args=[self.ns, task_id, repr(time.time())]))

    # -- reads -----------------------------------------------------------------------------

    def get(self, task_id: str) -> JobRecord | None:
        data = self.client.hgetall(self.key("job", task_id))
        if not data:
            return None
        return JobRecord.from_hash(task_id, {_text(k): _text(v) for k, v in data.items()})

    def owner(self, task_id: str) -> tuple[str | None, str | None]:
        """(state, worker) without parsing the request."""
        state, worker = self.client.hmget(self.key("job", task_id), "state", "worker")
        return (_text(state) if state else None), (_text(worker) if worker else None)

    def model_of(self, task_id: str) -> str | None:
        model = self.client.hget(self.key("job", task_id), "model")
        return _text(model) if model else None

    def position(self, task_id: str, model: str) -> int | None:
        rank = self.client.zrank(self.key("pending", model), task_id)
        return None if rank is None else rank + 1

    def pending(self) -> dict[str, int]:
        """Queued jobs per model."""
        models = sorted({_text(m) for m in self.client.smembers(self.key("pending_models"))})
        pipe = self.client.pipeline(transaction=False)
        for model in models:
            pipe.zcard(self.key("pending", model))
        return dict(zip(models, pipe.execute(), strict=True))

    def counts(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for state in STATES:
            pipe.scard(self.key("jobs", state))
        return dict(zip(STATES, pipe.execute(), strict=True))

    def recent_durations(self, state: str) -> list[float]:
        return [float(v) for v in self.client.lrange(self.key("durations", state), 0, -1)]

    def histogram(self) -> dict:
        data = {_text(k): _text(v) for k, v in self.client.hgetall(self.key("duration_hist")).items()}
        return {
            "buckets": [[b, int(data.get(f"le:{b:g}", 0))] for b in DURATION_BUCKETS],
            "sum": float(data.get("sum", 0.0)),
            "count": int(data.get("count", 0)),
        }

    # -- workers and models ----------------------------------------------------------------

    def advertise(self, worker: str, advert: dict, ttl_s: float) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.key("alive", worker), "1", px=int(ttl_s * 1000))
        pipe.hset(self.key("workers"), worker, json.dumps(advert | {"updated": time.time()}))
        pipe.hset(
            self.key("models"),
            advert["model"],
            json.dumps({"variant": advert["variant"], "tasks": advert["tasks"]}),
        )
        pipe.execute()

    def retire(self, worker: str, advert: dict) -> None:
        """A worker leaving cleanly: not alive any more (its last advert stays, shown offline)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key("alive", worker))
        pipe.hset(self.key("workers"), worker, json.dumps(advert | {"updated": time.time()}))
        pipe.execute()

    def alive(self, worker: str) -> bool:
        return bool(self.client.exists(self.key("alive", worker)))

    def workers(self) -> list[dict]:
        """Every worker seen in the last day, with ``alive``; forgotten ones are pruned."""
        adverts = {_text(k): json.loads(v) for k, v in self.client.hgetall(self.key("workers")).items()}
        names = sorted(adverts)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(self.key("alive", name))
        out, now = [], time.time()
        for name, alive in zip(names, pipe.execute(), strict=True):
            advert = adverts[name]
            if not alive and now - advert.get("updated", 0) > WORKERS_FORGOTTEN_AFTER_S:
                self.client.hdel(self.key("workers"), name)
                continue
            out.append(advert | {"id": name, "alive": bool(alive)})
        return out

    def models(self) -> dict[str, dict]:
        return {_text(k): json.loads(v) for k, v in self.client.hgetall(self.key("models")).items()}

    # -- retention -------------------------------------------------------------------------

    def expire_finished(self, older_than: float, limit: int = 500) -> list[str]:
        """Remove finished records that ended before ``older_than``; returns the ids this call took
        (two API servers sweeping at once never both delete the same job's files)."""
        ids = [_text(i) for i in self.client.zrangebyscore(self.key("finished"), 0, older_than, 0, limit)]
        taken = []
        for task_id in ids:
            if self.client.zrem(self.key("finished"), task_id):
                pipe = self.client.pipeline(transaction=True)
                pipe.delete(self.key("job", task_id))
                for state in ("succeeded", "failed"):
                    pipe.srem(self.key("jobs", state), task_id)
                pipe.execute()
                taken.append(task_id)
        return taken


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
