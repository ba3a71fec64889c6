"""Upstream's response shapes: the envelope, the integer job status and the result items.

New fields (``error``, per-task ``progress``/``stage``) are added; existing ones keep their meaning.
``progress`` is the job's overall fraction, never lower than before (acestep/worker/progress.py).
"""

from __future__ import annotations

import json
import time

from acestep.jobs.outputs import audio_url
from acestep.worker.dispatcher import Job
from acestep.worker.job import JobState

WIRE_STATUS = {"queued": 0, "running": 0, "succeeded": 1, "failed": 2}
# The embedded queue keeps its jobs in memory: after a restart, what was queued or running is gone.
UNKNOWN_TASK = (
    "unknown task_id: never submitted to this server, its record has expired (ACESTEP_RESULT_TTL), "
    "or the server restarted since: it keeps jobs in memory, so jobs queued or running at a restart "
    "are lost; submit the job again"
)
ENV = "development"
__all__ = ["audio_url", "envelope", "query_entry", "result_items"]


def envelope(data, code: int = 200, error: str | None = None) -> dict:
    return {"data": data, "code": code, "error": error, "timestamp": int(time.time() * 1000), "extra": None}


def _metas(job: Job) -> dict:
    """Final values (the LM may have filled bpm, key, time signature, duration and caption)."""
    request, metas = job.request, (job.result.metas if job.result else {})
    bpm = metas.get("bpm") or request.bpm
    return {
        "bpm": bpm if bpm is not None else "N/A",
        "duration": metas.get("duration", request.audio_duration),
        "genres": "N/A",
        "keyscale": metas.get("key_scale") or request.key_scale or "N/A",
        "timesignature": metas.get("time_signature") or request.time_signature or "N/A",
        "prompt": request.caption,
        "lyrics": request.lyrics,
    }


def result_items(job: Job) -> list[dict]:
    """The items of ``result`` (upstream sends them as a JSON-encoded string)."""
    base = {
        "wave": "",
        "create_time": int(job.created),
        "env": ENV,
        "progress": job.progress,
        "stage": job.stage,
    }
    if not JobState(job.state).ended:
        return [base | {"file": "", "status": 0, "prompt": "", "lyrics": "", "metas": {}, "error": None}]
    if job.state == JobState.FAILED:
        return [
            base
            | {"file": "", "status": 2, "error": job.error, "error_kind": job.error_kind}  # progress stays
        ]
    result = job.result
    seeds = ",".join(str(s) for s in result.seeds)
    info = (
        f"**{result.task_type}** on `{result.model}`; seeds {seeds}; {result.timings.get('total', 0):.2f} s"
    )
    common = base | {
        "status": 1,
        "prompt": result.metas.get("caption", job.request.caption),
        "lyrics": job.request.lyrics,
        "metas": _metas(job),
        "generation_info": info,
        "seed_value": seeds,
        "lm_model": result.metas.get("lm_model"),  # only when the LM ran (upstream always named one)
        "dit_model": result.model,
        "lora": result.metas.get("lora", []),  # the adapters it ran with: [{"name", "scale"}]
        "warnings": result.warnings,  # notes on how the request was read (docs/api.md)
        "progress": 1.0,
        "stage": "succeeded",
        "error": None,
    }
    return [
        common | {"file": audio_url(item.path), "seed": item.seed, "duration": item.duration}
        for item in result.items
    ]


def query_entry(task_id: str, job: Job | None, position: int | None = None) -> dict:
    if job is None:
        # Upstream answered "queued, []" forever (defect #3).
        return {
            "task_id": task_id,
            "status": 2,
            "result": "[]",
            "error": UNKNOWN_TASK,
            "progress_text": "",
        }
    progress_text = f"{job.stage} {job.progress * 100:.0f}%"
    if job.state == "queued" and position:
        progress_text = f"queued (position {position})"
    return {
        "task_id": task_id,
        "status": WIRE_STATUS.get(job.state, 2),
        "result": json.dumps(result_items(job)),
        "progress_text": progress_text,
        "progress": job.progress,
        "stage": job.stage,
        "error": job.error,
        "worker": getattr(job, "worker", None),  # the cluster worker that ran it (None on one server)
    }
