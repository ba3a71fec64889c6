"""MCP tools for training (only with ``ACESTEP_TRAINING=on``): ``start_training`` (a LoRA or LoKr
adapter on a dataset under the training folder), ``training_status`` and ``stop_training``.

Over the same ``JobService`` as the REST routes: one run at a time, the dataset confined to the
training folder, the same checks and the same reasons (as tool errors). The finished adapter is in
the LoRA folder under its name (``list_loras``), for ``generate_music``'s ``lora``.
"""

from __future__ import annotations

from typing import Literal

from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import ValidationError

from acestep.errors import validation_message
from acestep.jobs.failures import Refusal
from acestep.training.progress import TrainingProgress
from acestep.training.request import TrainingRequest
from acestep.worker.job import Job, JobState

# The fields ``rank`` and ``alpha`` set, per adapter type.
SIZE_FIELDS = {"lora": ("lora_rank", "lora_alpha"), "lokr": ("lokr_linear_dim", "lokr_linear_alpha")}


def _request(values: dict, options: dict | None) -> TrainingRequest:
    sent = {name: value for name, value in values.items() if value is not None}
    clash = sorted(set(sent) & set(options or {}))
    if clash:
        raise ToolError(f"{', '.join(clash)}: given twice (as an argument and in options)")
    try:
        return TrainingRequest.model_validate((options or {}) | sent)
    except ValidationError as exc:
        raise ToolError(validation_message(exc)) from None


def _status(job: Job | None) -> dict:
    """A run as the tools report it: its job's state and its ``TrainingProgress``."""
    if job is None:
        return {"task_id": None, "state": "idle", "is_training": False}
    progress = job.training or TrainingProgress()
    return {
        "task_id": job.id,
        "state": str(job.state),
        "is_training": not JobState(job.state).ended,
        "stage": job.stage,
        "progress": job.progress,
        "error": job.error,
        "adapter_type": job.request.adapter_type,
        "output_name": job.request.output_name,
        "training": progress.as_dict(),
    }


def add_training_tools(server: FastMCP, backend) -> None:
    """``backend.service`` is the ``JobService`` the tools queue through."""

    @server.tool()
    async def start_training(
        dataset: str,
        adapter_type: Literal["lora", "lokr"] = "lora",
        output_name: str | None = None,
        rank: int | None = None,
        alpha: float | None = None,
        learning_rate: float | None = None,
        train_epochs: int | None = None,
        max_steps: int | None = None,
        train_batch_size: int | None = None,
        gradient_accumulation: int | None = None,
        save_every_n_epochs: int | None = None,
        crop_seconds: float | None = None,
        resume: bool = False,
        model: str | None = None,
        options: dict | None = None,
    ) -> dict:
        """Queue the training of a LoRA or LoKr adapter; returns at once (follow it with
        ``training_status``). ``dataset``: a dataset JSON file or a folder of audio with sidecars,
        relative to the server's training folder. ``rank``/``alpha``: the adapter's (LoRA rank and
        alpha, or LoKr linear_dim and linear_alpha). ``learning_rate`` and ``train_epochs`` default
        per adapter type, as upstream's (LoKr: a far higher rate, many more epochs). ``options``:
        any other training field by upstream's name (``warmup_steps``, ``optimizer``,
        ``lora_dropout``, ``lokr_factor``...). The adapter's name is ``output_name`` (default:
        ``<dataset>-<adapter_type>``); one run at a time."""
        rank_field, alpha_field = SIZE_FIELDS[adapter_type]
        request = _request(
            {
                "dataset": dataset,
                "adapter_type": adapter_type,
                "output_name": output_name,
                rank_field: rank,
                alpha_field: alpha,
                "learning_rate": learning_rate,
                "train_epochs": train_epochs,
                "max_steps": max_steps,
                "train_batch_size": train_batch_size,
                "gradient_accumulation": gradient_accumulation,
                "save_every_n_epochs": save_every_n_epochs,
                "crop_seconds": crop_seconds,
                "resume": resume or None,
                "model": model,
            },
            options,
        )
        try:
            job, prepared = await backend.service.submit_training(request, confined=True)
        except Refusal as exc:
            raise ToolError(exc.reason) from None
        run = prepared.request
        return _status(job) | {
            "dataset": prepared.dataset,
            "samples": prepared.samples,
            "estimate_gib": prepared.estimate_gib,
            "learning_rate": run.lr,
            "epochs": run.epochs,
        }

    @server.tool()
    async def training_status(task_id: str | None = None) -> dict:
        """The latest training run (or ``task_id``'s): state, stage, step, loss history,
        checkpoints, and the adapter's name once written (``training.adapter``)."""
        job = backend.service.training_job(task_id)
        if task_id and job is None:
            raise ToolError(f"no training run {task_id!r} on this server")
        return _status(job)

    @server.tool()
    async def stop_training(task_id: str | None = None) -> dict:
        """Stop the running training run (or ``task_id``): it ends after the update in progress,
        keeps its last checkpoint and exports its adapter. ``outcome``: stopping, cancelled (it was
        queued), finished or none."""
        if task_id and backend.service.training_job(task_id) is None:
            raise ToolError(f"no training run {task_id!r} on this server")
        outcome = await backend.service.stop_training(task_id)
        return {"outcome": outcome}
