"""``JobRecord``: a job as stored in Redis, read back as a plain snapshot.

It extends ``JobInfo`` (``acestep/worker/job.py``), the fields the faces read from the embedded
queue's ``Job`` too (``state``, ``stage``, ``progress``, ``result``, ``error``, ``error_kind``,
``request``, ``created``...), so the wire format, the UI and the MCP tools serve either backend
unchanged. A training run is a record whose ``kind`` field is ``train``: its ``request`` is a
``TrainingRequest``, with its ``dataset`` and the latest ``training`` progress its worker stored.
A snapshot never changes: callers poll ``queue.get(task_id)`` for news.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from acestep.request import GenerationRequest
from acestep.result import GenerationResult
from acestep.training.progress import TrainingProgress
from acestep.training.request import TrainingRequest
from acestep.worker.job import JobInfo, JobState

RESULT_COMPUTED = {"audio_paths", "seeds"}


def request_json(request: GenerationRequest | TrainingRequest) -> str:
    # exclude_unset keeps "which fields were written" (random-seed logic reads model_fields_set).
    return request.model_dump_json(exclude_unset=True)


def result_json(result: GenerationResult) -> str:
    return result.model_dump_json(exclude=RESULT_COMPUTED)


def training_json(progress: TrainingProgress) -> str:
    return json.dumps(progress.as_dict())


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


@dataclass(kw_only=True)
class JobRecord(JobInfo):
    """A ``JobInfo`` as stored in Redis, with the cluster's own fields."""

    model: str
    attempts: int = 0
    worker: str | None = None
    uses_lm: bool | None = None
    cleanup: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # routing notes for the client (not stored)

    @property
    def done(self) -> bool:
        return self.state.ended

    def new_fields(self) -> dict[str, str]:
        """What ``create`` stores besides the state fields."""
        fields = {
            "kind": self.kind,
            "request": request_json(self.request),
            "created": repr(self.created),
            "lm_only": "1" if self.lm_only else "0",
            "uses_lm": "" if self.uses_lm is None else ("1" if self.uses_lm else "0"),
            "cleanup": json.dumps(self.cleanup),
        }
        if self.kind == "train":
            fields["dataset"] = self.dataset or ""
            fields["training"] = training_json(self.training or TrainingProgress())
        return fields

    @classmethod
    def from_hash(cls, task_id: str, data: dict[str, str]) -> JobRecord:
        uses_lm = data.get("uses_lm", "")
        training = data.get("kind") == "train"  # records written before training had no kind
        request_type = TrainingRequest if training else GenerationRequest
        return cls(
            id=task_id,
            request=request_type.model_validate_json(data["request"]),
            model=data.get("model", ""),
            state=JobState(data.get("state") or JobState.QUEUED),
            stage=data.get("stage", "queued"),
            progress=float(data.get("progress") or 0.0),
            result=GenerationResult.model_validate_json(data["result"]) if data.get("result") else None,
            error=data.get("error") or None,
            error_kind=data.get("error_kind") or None,
            created=float(data.get("created") or 0.0),
            started=_float(data.get("started")),
            finished=_float(data.get("finished")),
            attempts=int(data.get("attempts") or 0),
            worker=data.get("worker") or None,
            lm_only=data.get("lm_only") == "1",
            uses_lm=None if uses_lm == "" else uses_lm == "1",
            cleanup=json.loads(data.get("cleanup") or "[]"),
            cancel_requested=data.get("cancel_requested") == "1",
            dataset=(data.get("dataset") or None) if training else None,
            training=TrainingProgress.from_dict(json.loads(data["training"]))
            if training and data.get("training")
            else None,
        )
