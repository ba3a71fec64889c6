"""The model inventory: what ``/v1/models``, ``/v1/model_inventory``, ``/v1/init`` and ``/health``
report about the models this server serves, built from ``app.state`` without touching a GPU.

``is_loaded`` means "this server serves the model": a slot declares it or the worker loads it on
demand from the checkpoints root. Where its weights are now is ``residency`` (``ready``: on the
compute device, ``parked``: in CPU RAM, ``unloaded``: on disk). Upstream's ``is_loaded`` is
"weights initialised now", which makes a model that loads on demand look unusable to clients that
grey out their buttons on it (patches/0037).
"""

from __future__ import annotations

from pathlib import Path

from acestep.checkpoints.lm_folders import LM_PREFIX
from acestep.checkpoints.slots import ModelSlots, describe

GIB = 2**30
RESIDENCY_ORDER = ("ready", "parked", "unloaded")


def _residencies(state, workers: list[dict]) -> dict[str, str]:
    """Where each model's weights are: the local worker's loaded DiTs, or the cluster's adverts."""
    if not state.queue.routes_by_model:
        return dict(state.manager.models())
    found: dict[str, str] = {}
    for worker in workers:
        if not worker.get("alive"):
            continue
        name, where = worker.get("model"), worker.get("state") or "unloaded"
        where = where if where in RESIDENCY_ORDER else "unloaded"
        best = found.get(name, "unloaded")
        found[name] = min(best, where, key=RESIDENCY_ORDER.index)
    return found


def model_entries(state, workers: list[dict]) -> list[dict]:
    """One entry per served model, sorted by name (blocking: call it from a thread)."""
    slots: ModelSlots = state.slots
    residency = _residencies(state, workers)
    root = slots.primary.root
    cluster = state.queue.routes_by_model
    known = {}
    for name in slots.served():
        variant, tasks = describe(root, name)
        known[name] = {"variant": variant, "tasks": tasks}
    if slots.primary.layout != "upstream":  # a diffusers folder: its own variant
        variant = slots.primary.variant
        known[slots.default] = {"variant": variant.name, "tasks": sorted(variant.supported_tasks)}
    if cluster:  # every model a worker of the cluster has served
        for name, info in state.queue.models().items():
            known[name] = {"variant": info["variant"], "tasks": sorted(info["tasks"])}
    entries = []
    for name in sorted(known):
        live = sum(1 for w in workers if w.get("alive") and w.get("model") == name)
        tasks = known[name]["tasks"]
        entries.append(
            {
                "name": name,
                "is_default": name == slots.default,
                # Served here: always on one server; in a cluster, while a live worker serves it.
                "is_loaded": bool(live) if cluster else True,
                "residency": residency.get(name, "unloaded"),
                "variant": known[name]["variant"],
                "supported_task_types": tasks,
                "slot": slots.slot_of(name),
                "workers": live,
            }
        )
    return entries


def lm_entries(state) -> list[dict]:
    """The LM folders under the checkpoints root; the one this server uses is ``is_loaded``."""
    root: Path = state.slots.primary.root
    names = sorted(p.name for p in root.glob(f"{LM_PREFIX}*") if p.is_dir()) if root.is_dir() else []
    if state.lm_name and state.lm_name not in names:
        names.append(state.lm_name)
    return [{"name": name, "is_loaded": name == state.lm_name} for name in sorted(names)]


def gpu_fields(state) -> dict:
    """Upstream's ``gpus``, ``gpu_mapping`` and ``device_map``: this server's GPUs (none in a
    cluster's API server, which holds no GPU; its workers' are in ``/v1/memory``)."""
    gpus = []
    memory = getattr(state.manager, "manager", None)  # the local Supervisor's MemoryManager
    if memory is not None and memory.gpu is not None:
        for gpu in memory.source.gpus():
            entry = {
                "index": gpu.index,
                "name": gpu.name,
                "total_vram_gb": round(gpu.total_bytes / GIB, 2),
                "free_vram_gb": round(gpu.free_bytes / GIB, 2),
            }
            if gpu.compute_capability:
                entry["compute_capability"] = ".".join(str(part) for part in gpu.compute_capability)
            gpus.append(entry)
    return {"gpus": gpus, "gpu_mapping": None, "device_map": None}  # one device per worker here


def inventory(state) -> dict:
    """The ``/v1/models`` and ``/v1/model_inventory`` payload (blocking: call it from a thread)."""
    workers = state.queue.workers()
    return {
        "models": model_entries(state, workers),
        "default_model": state.slots.default,
        "lm_models": lm_entries(state),
        "loaded_lm_model": state.lm_name,
        "llm_initialized": state.lm_name is not None,
    } | gpu_fields(state)


__all__ = ["gpu_fields", "inventory", "lm_entries", "model_entries"]
