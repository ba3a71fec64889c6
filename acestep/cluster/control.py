"""``ClusterControl``: the memory controls of an API server whose GPUs are in worker processes.

It stands where a single server's ``Supervisor`` stands (``app.state.manager``): ``unload``,
``load`` and the LoRA loads and unloads are sent to every live worker over Redis and run there
between jobs; ``get_status`` lists the workers' adverts. The server itself holds no model and
never touches a GPU.
"""

from __future__ import annotations

import json
import time
import uuid

from acestep.cluster.queue import RedisJobQueue, redis_unavailable
from acestep.memory.status import MemoryStatus

DEFAULT_TIMEOUT_S = 600.0  # an unload waits for the running job on each worker
BLOCK_S = 5


class RedisDefault:
    """The default LoRA adapters of every API server of a cluster, in one Redis key."""

    def __init__(self, queue: RedisJobQueue):
        self.client, self.key = queue.client, queue.store.key("lora_default")

    def get(self) -> dict:
        with redis_unavailable("read the default LoRA"):
            raw = self.client.get(self.key)
        return json.loads(raw) if raw else {}

    def put(self, value: dict) -> None:
        with redis_unavailable("store the default LoRA"):
            self.client.set(self.key, json.dumps(value))


class ClusterControl:
    def __init__(self, queue: RedisJobQueue):
        self.queue = queue
        self.lm_name: str | None = None

    def status(self) -> MemoryStatus:
        return MemoryStatus.cluster(self.queue.workers())

    def get_status(self) -> dict:
        return self.status().as_dict()

    def unload(self, level: str = "free", timeout: float | None = None) -> dict:
        if level not in ("park", "free"):
            raise ValueError(f"unload level must be park or free, got {level!r}")
        return self._broadcast({"action": "unload", "level": level}, level, timeout)

    def load(self, timeout: float | None = None, model: str | None = None) -> dict:
        """Load on every live worker, or only on those serving ``model`` (UnknownModel if none has)."""
        if model:
            from acestep.checkpoints.slots import UnknownModel

            served = sorted(self.queue.models())
            if model not in served:
                raise UnknownModel(model, served)
        report = self._broadcast({"action": "load"}, "load", timeout, model)
        return report | {"model": model}

    def load_lora(self, names: list[str], timeout: float | None = None) -> dict:
        """Load adapters on every live worker (each checks that they fit its model)."""
        return self._broadcast({"action": "lora_load", "names": list(names)}, "lora_load", timeout)

    def unload_lora(self, names: list[str] | None = None, timeout: float | None = None) -> dict:
        return self._broadcast({"action": "lora_unload", "names": names}, "lora_unload", timeout)

    def _broadcast(self, command: dict, action: str, timeout: float | None, model: str | None = None) -> dict:
        store, client = self.queue.store, self.queue.client
        started = time.monotonic()
        deadline = started + (DEFAULT_TIMEOUT_S if timeout is None else timeout)
        with redis_unavailable(f"send {action} to the workers"):
            live = [w["id"] for w in store.workers() if w["alive"] and model in (None, w.get("model"))]
            sent = {}
            for worker in live:
                ident = uuid.uuid4().hex
                client.rpush(store.key("control", worker), json.dumps(command | {"id": ident}))
                sent[worker] = ident
            replies, missing = {}, []
            for worker, ident in sent.items():
                item = None
                # Short blocking reads: one longer than the client's socket timeout would fail.
                while item is None and time.monotonic() < deadline:
                    wait = max(1, min(BLOCK_S, int(deadline - time.monotonic())))
                    item = client.blpop([store.key("reply", ident)], timeout=wait)
                if item is None:
                    missing.append(worker)
                else:
                    replies[worker] = json.loads(item[1])
        return {
            "action": action,
            "workers": replies,
            "no_reply": missing,
            "note": None if live else "no live workers",
            "seconds": round(time.monotonic() - started, 3),
        }

    def close(self) -> None:
        return None
