"""What the UI's buttons do: queue a job and follow it, or ask the memory manager. Never the GPU.

Each action is an async generator, so the browser sees progress while the job runs and the
server's event loop stays free for other sessions.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import anyio
import gradio as gr
from pydantic import ValidationError

from acestep.engine.audio_limits import AudioInputError
from acestep.errors import validation_message
from acestep.jobs.uploads import UploadError, confine, sniff_audio
from acestep.request import GenerationRequest
from acestep.ui.results import MAX_OUTPUTS, TIME_SIGNATURE_NAMES, ResultsPanel
from acestep.worker.job import JobState

__all__ = ["MAX_OUTPUTS", "follow", "lm_summary", "memory_action", "memory_text", "stage_upload"]

CAPTION_SHOWN = 200  # characters of the LM's caption in the status line


def _request(values: dict) -> GenerationRequest:
    try:
        return GenerationRequest(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise gr.Error(validation_message(exc)) from None


async def stage_upload(state, path: str | None, text: dict) -> Path:
    """Copy a file uploaded through the UI into the server's uploads directory (where job inputs
    may live), off the event loop. Gradio refuses paths it did not receive; this checks again,
    without saying whether a refused path exists (only a regular file in Gradio's upload folder is
    read), and checks the audio's header as the API does."""
    if not path:
        raise gr.Error(text["need_source"])
    try:
        return await anyio.to_thread.run_sync(_stage, state.config, path)
    except AudioInputError as exc:
        raise gr.Error(str(exc)) from None


def _stage(config, path: str) -> Path:
    from gradio.utils import get_upload_folder

    from acestep.engine.audio_probe import checked_seconds

    try:
        source = confine(path, [Path(get_upload_folder())], "source")
    except UploadError:
        raise gr.Error("the source must be a file uploaded here") from None
    if not source.is_file():  # a device (/dev/zero) or a folder would block or fail the read
        raise gr.Error("the source must be a file uploaded here")
    if source.stat().st_size > config.max_upload_bytes:
        raise gr.Error(f"the uploaded file is over {config.max_upload_bytes // 2**20} MB")
    with source.open("rb") as handle:
        kind = sniff_audio(handle.read(12))
    if kind is None:
        raise gr.Error("the uploaded file is not WAV, FLAC, MP3 or OGG audio")
    checked_seconds(source, "source")  # rate, channels and decoded size, read in a bounded child process
    config.uploads_dir.mkdir(parents=True, exist_ok=True)
    target = config.uploads_dir / f"ui_{uuid.uuid4().hex}.{kind}"
    try:
        shutil.copyfile(source, target)
    except BaseException:  # a full disk or a cancelled copy leaves no partial file
        target.unlink(missing_ok=True)
        raise
    return target


async def follow(
    state,
    request: GenerationRequest,
    cleanup: list[Path],
    text: dict,
    progress: gr.Progress,
    panel: ResultsPanel,
    source: str | None = None,
):
    """Submit through the app's ``JobService`` and yield ``panel``'s updates (the status line, then
    the results) until the job ends. ``source`` is the source as the page holds it (the staged
    copy goes with the job), heard in a lego or extract result's A/B switch. A refusal or a
    failure shows the reason REST and MCP give."""
    from acestep.jobs.failures import Refusal

    service = state.service
    last = None
    try:
        queued = await service.submit(request, cleanup)  # refused: the uploads are deleted
        job = queued
        async for job in service.watch(queued):  # noqa: B007 (the last snapshot is the ended job)
            if JobState(job.state).ended:
                continue  # the last one: its outcome follows
            if job.state == JobState.QUEUED:
                position = await anyio.to_thread.run_sync(service.queue.position, job.id)
                line = f"{text['queued']} ({position})" if position else text["queued"]
            else:
                line = f"{job.stage} {job.progress * 100:.0f}%"
            progress(job.progress, desc=job.stage)
            if line != last:
                yield (
                    panel.cleared(line) if last is None else panel.progress(line)
                )  # a new job: old results go
                last = line
        job = service.outcome(job)
    except Refusal as exc:
        raise gr.Error(exc.reason) from None
    summary = (
        f"{text['done']}: seeds {', '.join(map(str, job.result.seeds))} ({job.result.timings['total']:.1f} s)"
        f" · {job.result.task_type}"
    )
    if job.result.metas.get("lm_model"):
        summary += "\n" + lm_summary(job.result.metas, text)
    adapters = job.result.metas.get("lora") or []  # what the job ran with (a default one included)
    if adapters:
        summary += "\nLoRA: " + ", ".join(f"{a['name']} x{a['scale']:g}" for a in adapters)
    summary += "".join(f"\n{note}" for note in job.result.warnings)  # fields that changed nothing, ...
    yield await anyio.to_thread.run_sync(panel.filled, summary, job.result, source)  # spectrograms, mixes


def lm_summary(metas: dict, text: dict) -> str:
    """One line: what the LM settled on (the values the DiT used) and how many codes it wrote."""
    from acestep.lm.cot import CODE_TOKEN_RE

    signature = metas.get("time_signature")
    parts = {
        "bpm": metas.get("bpm"),
        "lm_key": metas.get("key_scale"),
        "lm_time_signature": TIME_SIGNATURE_NAMES.get(signature, signature),
        "lm_duration": f"{metas['duration']:g} s" if metas.get("duration") else None,
        "lm_codes": ", ".join(
            str(len(CODE_TOKEN_RE.findall(c or ""))) for c in metas.get("audio_codes") or []
        ),
        "caption": _clip(metas.get("caption") or "", CAPTION_SHOWN),
    }
    shown = " · ".join(f"{text[name]}: {value}" for name, value in parts.items() if value)
    return f"{text['lm_settled']} ({metas['lm_model']}): {shown}"


def _clip(value: str, limit: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def memory_text(state, text: dict) -> str:
    status = state.manager.get_status()
    if status.get("mode") == "cluster":  # the GPUs are acestep-worker processes
        return _cluster_text(status, text)
    worker = status["worker"] or {}
    lines = [
        f"**{text['state']}:** {worker.get('state', 'unloaded')}",
        f"**tier:** {status['tier']} · **device:** {status['device']}",
        "**residency:** " + ", ".join(f"{k} {v}" for k, v in (status["residency"] or {}).items()),
        "**quantization:** "
        + ", ".join(f"{k} {v}" for k, v in (status.get("quantization") or {}).items() if k != "origin"),
    ]
    adapters = status.get("adapters") or {}
    if adapters.get("loaded"):
        active = {a["name"]: a["scale"] for a in adapters["active"]}
        lines.append(
            "**LoRA:** "
            + ", ".join(
                a["name"] + (f" x{active[a['name']]:g}" if a["name"] in active else "")
                for a in adapters["loaded"]
            )
            + f" ({adapters['bytes'] / 2**20:.1f} MiB)"
        )
    if status["last_reports"]:
        report = status["last_reports"][-1]
        lines.append(f"**last:** {report['action']} ({report['reason']}) in {report['seconds']:.2f} s")
    return "\n\n".join(lines) + "\n\n```json\n" + json.dumps(status["limits"], indent=1) + "\n```"


def _cluster_text(status: dict, text: dict) -> str:
    lines = [f"**{text['state']}:** {status['live_workers']} live workers"]
    for worker in status["workers"]:
        vram = worker.get("vram_used_bytes")
        used = f" · {vram / 2**30:.1f} GiB" if vram else ""
        alive = "" if worker["alive"] else " (offline)"
        lines.append(f"- `{worker['id']}`{alive}: {worker['model']} {worker.get('state')}{used}")
    return "\n".join(lines)


async def memory_action(state, action: str, text: dict) -> str:
    """Free, park or load (after the running job, waited for off the shared thread pool)."""
    from acestep.jobs.waits import CommandTimeout, run_command
    from acestep.worker.dispatcher import BusyError

    try:
        if action in ("free", "park"):
            await run_command(state.manager.unload, action)
        elif action == "load":
            await run_command(state.manager.load)
    except (BusyError, CommandTimeout) as exc:
        raise gr.Error(str(exc)) from None
    return await anyio.to_thread.run_sync(memory_text, state, text)
