"""The Training tab's Train page: a run's settings, Start and Stop, its live status line, loss plot
and checkpoints, and the finished adapter.

A run is queued through the app's ``JobService`` (``submit_training``) and followed with a timer
that reads the job while it is active: nothing here waits on the run, so a closed browser leaves
it running (Stop ends it). Refusals show the reason REST and MCP give.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import gradio as gr
import pandas as pd
from pydantic import ValidationError

from acestep.errors import validation_message
from acestep.jobs.failures import Refusal, failure_reason
from acestep.settings import training_dir
from acestep.training.places import run_dir
from acestep.training.request import (
    ADAPTER_TYPES,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    OPTIMIZERS,
    TrainingRequest,
)
from acestep.worker.job import JobState

TICK_S = 1.0  # how often a followed run is read
FIELDS = TrainingRequest.model_fields
# The page's number fields: (request field, string key, whole number); the rank and alpha fields
# are LoRA's, and name LoKr's dimension and alpha when the adapter type is LoKr.
NUMBERS = (
    ("lora_rank", "train_rank", True),
    ("lora_alpha", "train_alpha", False),
    ("learning_rate", "train_learning_rate", False),
    ("train_epochs", "train_epochs", True),
    ("max_steps", "train_max_steps", True),
    ("train_batch_size", "train_batch", True),
    ("gradient_accumulation", "train_accumulation", True),
    ("crop_seconds", "train_crop", False),
    ("warmup_steps", "train_warmup", True),
    ("save_every_n_epochs", "train_save_every", True),
    ("training_seed", "train_seed", True),
)
UNSET = {name for name, _, _ in NUMBERS if FIELDS[name].default is None}  # 0: the default
LOKR_NAMES = {"lora_rank": "lokr_linear_dim", "lora_alpha": "lokr_linear_alpha"}


@dataclass
class RunPage:
    dataset: gr.Dropdown
    adapter: gr.State  # the finished adapter's name, once the followed run wrote one
    use: gr.Button
    note: gr.Markdown
    follow: object  # handler for the tab's select: this page's run id -> its outputs
    job_id: gr.State
    outputs: list  # what ``follow`` returns


def request_of(values: dict) -> TrainingRequest:
    """The run the fields describe (empty fields take the request's defaults); gr.Error says what
    is wrong otherwise."""
    try:
        return TrainingRequest(**{k: v for k, v in values.items() if v is not None and v != ""})
    except ValidationError as exc:
        raise gr.Error(validation_message(exc)) from None


async def submit(state, request: TrainingRequest):
    """Queue a run; a refusal (a bad dataset, a run already going, a GPU too small) shows its reason."""
    try:
        return await state.service.submit_training(request)
    except Refusal as exc:
        raise gr.Error(exc.reason) from None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _counts(preprocess: dict, text: dict) -> str:
    parts = []
    for kind in ("computed", "reused"):
        counts = preprocess.get(kind) or {}
        if counts:
            parts.append(f"{text['train_' + kind]}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return " · ".join(parts)


def run_line(job, text: dict) -> str:
    """One line: where the run is (stage, step/total, epoch, loss, lr, ETA) or how it ended."""
    progress = job.training
    if job.state == JobState.QUEUED:
        return text["queued"]
    if job.state == JobState.FAILED:
        return f"{text['failed']}: {failure_reason(job)}"
    if progress is None:
        return f"{job.stage} {job.progress * 100:.0f}%"
    counts = _counts(progress.preprocess, text)
    if job.state == JobState.SUCCEEDED:
        if job.request.preprocess_only:
            return f"{text['done']}: {progress.samples} {text['train_samples']} · {counts}"
        ended = text["train_stopped"] if progress.stopped else text["done"]
        loss = f" · {text['train_loss'].lower()} {progress.loss:.4f}" if progress.loss is not None else ""
        return (
            f"{ended}: {text['train_adapter']} {progress.adapter} · {text['train_step']} "
            f"{progress.step}/{progress.total_steps}{loss} · {_clock(progress.elapsed_s)}"
        )
    if progress.stage != "train":
        stage = job.stage if progress.stage == "queued" else progress.stage  # "starting": the model loads
        line = f"{stage} {progress.fraction * 100:.0f}%"
        return f"{line} · {counts}" if counts else line
    parts = [
        progress.stage,
        f"{text['train_step']} {progress.step}/{progress.total_steps}",
        f"{text['train_epoch']} {progress.epoch}/{progress.epochs}",
    ]
    if progress.loss is not None:
        parts.append(f"{text['train_loss'].lower()} {progress.loss:.4f}")
    if progress.learning_rate is not None:
        parts.append(f"lr {progress.learning_rate:.2e}")
    parts.append(f"ETA {_clock(progress.eta_s)}")
    return " · ".join(parts)


async def status_of(state, job_id: str | None, text: dict) -> tuple[str, bool]:
    """The run's line, and whether it has ended (or is gone: its record was swept)."""
    job = await anyio.to_thread.run_sync(state.service.training_job, job_id) if job_id else None
    if job is None:
        return text["train_no_run"], True
    return run_line(job, text), JobState(job.state).ended


def losses(job) -> pd.DataFrame:
    """The plot's points, typed (an untyped column would make its axis a list of labels)."""
    points = job.training.losses if job is not None and job.training is not None else []
    return pd.DataFrame(
        {
            "step": pd.Series([step for step, _ in points], dtype="int64"),
            "loss": pd.Series([loss for _, loss in points], dtype="float64"),
        }
    )


def checkpoints_text(job, text: dict) -> str:
    progress = job.training if job is not None else None
    if progress is None or job.request.preprocess_only:
        return ""
    steps = ", ".join(str(step) for step in progress.checkpoints) or "-"
    where = run_dir(training_dir(), job.request.output_name or "")
    lines = [f"**{text['train_checkpoints']}:** {steps} (`{where}`)"]
    if progress.preprocess:  # the cache this run read: what it computed, what it found
        lines.append(f"**{text['train_preprocess']}:** {_counts(progress.preprocess, text)}")
    if progress.adapter:
        lines.append(f"**{text['train_adapter'].capitalize()}:** `{progress.adapter}`")
    return "\n\n".join(lines)


def _number(name: str, key: str, whole: bool, text: dict) -> gr.Number:
    default = FIELDS[name].default
    if default is None:
        default = 0  # a Number has no empty value: 0 stands for the request's default (UNSET)
    label = text[key]
    if name == "learning_rate":
        label = label.format(**DEFAULT_LEARNING_RATE)
    elif name == "train_epochs":
        label = label.format(**DEFAULT_EPOCHS)
    return gr.Number(
        value=default, precision=0 if whole else None, label=label, elem_id="train-" + name.replace("_", "-")
    )


def page(state, text: dict, datasets: list[str]) -> RunPage:
    with gr.Row():
        dataset = gr.Dropdown(
            datasets,
            value=None,
            allow_custom_value=True,
            label=text["train_dataset"],
            elem_id="train-dataset",
        )
        kind = gr.Radio(
            list(ADAPTER_TYPES),
            value=FIELDS["adapter_type"].default,
            label=text["train_type"],
            elem_id="train-type",
        )
        output_name = gr.Textbox(label=text["train_output_name"], elem_id="train-output-name")
    numbers = {}
    for start in range(0, len(NUMBERS), 4):
        with gr.Row():
            for name, key, whole in NUMBERS[start : start + 4]:
                numbers[name] = _number(name, key, whole, text)
    with gr.Row():
        optimizer = gr.Dropdown(
            list(OPTIMIZERS),
            value=FIELDS["optimizer"].default,
            label=text["train_optimizer"],
            elem_id="train-optimizer",
        )
        checkpointing = gr.Checkbox(
            FIELDS["gradient_checkpointing"].default,
            label=text["train_checkpointing"],
            elem_id="train-checkpointing",
        )
        resume = gr.Checkbox(FIELDS["resume"].default, label=text["train_resume"], elem_id="train-resume")
    with gr.Row():
        start = gr.Button(text["train_start"], variant="primary", elem_id="train-start")
        stop = gr.Button(text["train_stop"], variant="stop", elem_id="train-stop")
    status = gr.Textbox(label=text["train_status"], interactive=False, elem_id="train-status")
    plot = gr.LinePlot(
        losses(None), x="step", y="loss", label=text["train_loss"], height=260, elem_id="train-loss"
    )
    checkpoints = gr.Markdown(elem_id="train-checkpoints")
    with gr.Row():
        use = gr.Button(text["train_use"], elem_id="train-use")
    note = gr.Markdown(elem_id="train-use-note")
    job_id, adapter = gr.State(None), gr.State(None)
    timer = gr.Timer(TICK_S, active=False)

    async def begin(dataset, kind, output_name, *rest):
        values = dict(zip(numbers, rest[: len(numbers)], strict=True))
        values = {k: None if k in UNSET and not v else v for k, v in values.items()}
        optimizer, checkpointing, resume = rest[len(numbers) :]
        if kind == "lokr":
            values = {LOKR_NAMES.get(name, name): value for name, value in values.items()}
        values |= {
            "dataset": (dataset or "").strip(),
            "adapter_type": kind,
            "output_name": (output_name or "").strip() or None,
            "optimizer": optimizer,
            "gradient_checkpointing": checkpointing,
            "resume": resume,
        }
        request = request_of(values)
        job, prepared = await submit(state, request)
        line = (
            f"{text['queued']} · {prepared.samples} {text['train_samples']} · "
            f"{text['train_adapter']} {prepared.request.output_name}"
        )
        return job.id, line, losses(None), "", None, gr.Timer(active=True)

    async def show(current):
        job = await anyio.to_thread.run_sync(state.service.training_job, current) if current else None
        if job is None:
            return text["train_no_run"], losses(None), "", None, gr.Timer(active=False)
        written = job.training.adapter if job.training is not None else None
        active = gr.Timer(active=not JobState(job.state).ended)
        return run_line(job, text), losses(job), checkpoints_text(job, text), written, active

    async def halt(current):
        """Stop this page's run, else the latest one (a run another page or client started)."""
        job = await anyio.to_thread.run_sync(state.service.training_job, current)
        if job is None and current is not None:
            job = await anyio.to_thread.run_sync(state.service.training_job, None)
        if job is None:
            raise gr.Error(text["train_no_run"])
        gr.Info(text["train_stop_" + await state.service.stop_training(job.id)])
        return job.id, gr.Timer(active=True)  # the next tick shows how it ended

    outputs = [status, plot, checkpoints, adapter, timer]
    inputs = [dataset, kind, output_name, *numbers.values(), optimizer, checkpointing, resume]
    start.click(begin, inputs, [job_id, *outputs], concurrency_limit=None)
    stop.click(halt, job_id, [job_id, timer], concurrency_limit=None)
    timer.tick(show, job_id, outputs)

    async def follow(current):
        """On opening the tab: without a run of its own, the page shows the latest training run
        (a reloaded page finds the run it started)."""
        if current is None:
            latest = await anyio.to_thread.run_sync(state.service.training_job, None)
            if latest is not None and not latest.request.preprocess_only:
                current = latest.id
        if current is None:
            return current, *(gr.skip() for _ in outputs)
        return current, *(await show(current))

    return RunPage(dataset, adapter, use, note, follow, job_id, [job_id, *outputs])


__all__ = ["TICK_S", "RunPage", "page", "request_of", "run_line", "status_of", "submit"]
