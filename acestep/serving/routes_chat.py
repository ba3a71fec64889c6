"""Upstream's chat-completions surface: ``POST /v1/chat/completions`` and ``GET /api/v1/models``.

A chat request becomes one ``GenerationRequest`` and is queued through the same front door as
``/release_task`` (queue, 429, the LM check, validation, limits, cluster routing), behind the same
key. The answer is upstream's completion, or with ``stream: true`` its server-sent events with
progress added as SSE comment lines. Differences from upstream are listed in docs/api.md ("Chat
completions") and patches/0040-0042.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from loguru import logger
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from acestep.checkpoints.slots import UnknownModel, variant_of
from acestep.errors import JobErrorKind, shown, validation_lines, validation_message
from acestep.jobs.failures import Refusal, RefusalCause
from acestep.jobs.service import discard
from acestep.jobs.uploads import UploadError, save_upload
from acestep.request import GenerationRequest
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.chat_messages import AudioPart, MessageTooLong, ParsedMessages, parse_messages
from acestep.serving.chat_replies import (
    DONE,
    audio_parts,
    chunk,
    completion,
    completion_id,
    content_text,
    progress_comment,
)
from acestep.serving.chat_schema import CHAT_REQUEST_SCHEMA, ChatCompletionRequest
from acestep.serving.inputs import check_audio
from acestep.serving.routes_compat import submit
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.tasks import SOURCE_TASKS
from acestep.worker.job import Job, JobState

router = APIRouter(tags=["chat"])

CHAT_PATH = "/v1/chat/completions"
TIMEOUT_S: float = setting_value(current_settings(), "ACESTEP_GENERATION_TIMEOUT")
MODEL_PREFIX = "acestep"
HEARTBEAT_S = 2.0  # upstream's "." content chunk while the job runs
PROGRESS_STEP = 0.01  # a progress comment when the fraction moved this much, or the stage changed
MAX_AUDIO_PARTS = 2  # source and reference: what a generation reads
NOTHING_ASKED = "No valid prompt, lyrics, sample query, or input audio found in request"  # upstream's words
# GenerationRequest field -> the chat field a client sent it as, for refusals.
CHAT_NAMES = {
    "caption": "messages (prompt)",
    "audio_duration": "audio_config.duration",
    "bpm": "audio_config.bpm",
    "key_scale": "audio_config.key_scale",
    "time_signature": "audio_config.time_signature",
    "vocal_language": "audio_config.vocal_language",
    "audio_format": "audio_config.format",
    "lm_temperature": "temperature",
    "lm_top_p": "top_p",
    "lm_top_k": "top_k",
    "audio_code_string": "audio_codes",
    "sample_query": "messages (prompt)",
    "src_audio": "input_audio",
    "reference_audio": "input_audio",
}
# Chat fields upstream declares that change nothing here (logged when sent).
NO_EFFECT = ("modalities", "max_tokens", "stop", "cover_noise_strength", "infer_method")


async def served_models(request: Request) -> list[str]:
    """The model names this server, or its cluster, serves; the default first. The one place the
    chat routes ask."""
    state = request.app.state
    names = [state.model_name]
    slots = getattr(state, "slots", None)  # the slots and the root's DiT folders (checkpoints/slots.py)
    if slots is not None:
        names += [name for name in await run_in_threadpool(slots.served) if name not in names]
    if state.queue.routes_by_model:  # a cluster: every model a worker serves
        names += [name for name in await run_in_threadpool(state.queue.models) if name not in names]
    return names


def _model_name(sent: str | None) -> str | None:
    """``acemusic/acestep-v15-turbo`` -> ``acestep-v15-turbo``; absent or blank -> None."""
    name = (sent or "").strip()
    return (name.split("/", 1)[1] if "/" in name else name).strip() or None


async def _chosen_model(request: Request, sent: str | None) -> str | None:
    """The model a request names, if this server serves it; a refusal listing the served ones."""
    name = _model_name(sent)
    if name is None:
        return None
    served = await served_models(request)
    if name not in served:
        raise Refusal(RefusalCause.UNKNOWN_MODEL, str(UnknownModel(name, served)))
    return name


def _default_steps(request: Request, model: str | None) -> int:
    """The steps of the model the request runs on, when it names none (patches/0040)."""
    if model is None or model == request.app.state.model_name:
        return request.app.state.variant.default_steps
    return variant_of(request.app.state.slots.primary.root, model).default_steps


NO_WHITESPACE = dict.fromkeys(map(ord, " \t\r\n\f\v"))


class _Bytes:
    """Decoded base64, read the way ``save_upload`` reads a multipart file."""

    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    async def read(self, size: int = -1) -> bytes:
        return self.buffer.read(size)


async def _save_audio(request: Request, part: AudioPart) -> Path:
    """One ``input_audio`` part saved as an upload: size limit, content sniff, length bounds."""
    config = request.app.state.config
    if part.data.startswith("data:"):
        _, comma, text = part.data.partition(",")
        if not comma:
            raise Refusal(JobErrorKind.INPUT, f"{part.where}: a data URL needs a comma before its base64")
    else:
        text = part.data
    encoded = 4 * math.ceil(config.max_upload_bytes / 3) + 4
    # Sized before anything is copied; line-wrapped base64 (the `base64` tool's default) is still
    # base64, so whitespace gets room (one line break per 76 characters needs 2 %; 2x is plenty).
    if len(text) > 2 * encoded or len(text := text.translate(NO_WHITESPACE)) > encoded:
        raise UploadError(
            RefusalCause.TOO_LARGE,
            f"{part.where}: upload too large: the limit is {config.max_upload_bytes} bytes "
            "(ACESTEP_MAX_UPLOAD_MB)",
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(JobErrorKind.INPUT, f"{part.where}: data is not valid base64") from None
    try:
        path = await save_upload(_Bytes(raw), config.uploads_dir, config.max_upload_bytes, prefix="chat_")
    except UploadError as exc:
        raise UploadError(exc.cause, f"{part.where}: {exc.reason}") from None
    try:
        await run_in_threadpool(check_audio, path, part.where)
    except BaseException:
        discard([path])
        raise
    return path


def _values(
    request: Request, body: ChatCompletionRequest, parsed: ParsedMessages, model: str | None = None
) -> dict:
    """The GenerationRequest fields of a chat request, with upstream's chat defaults."""
    config = body.audio_config
    caption, lyrics = parsed.caption, parsed.lyrics
    sample_query = ""
    if body.lyrics:  # the top-level field wins over the message's lyrics
        lyrics = body.lyrics
    elif body.sample_mode:  # the message is the LM's query; upstream keeps no caption or lyrics
        caption, lyrics, sample_query = "", "", parsed.caption
    values: dict = {
        "caption": caption,
        "lyrics": lyrics,
        "instrumental": bool(config and config.instrumental and not lyrics.strip()),
        "task_type": body.task_type,
        "sample_mode": body.sample_mode,
        "sample_query": sample_query,
        "use_format": body.use_format,
        "use_cot_caption": body.use_cot_caption,
        "use_cot_language": body.use_cot_language,
        "thinking": bool(body.thinking),
        "lm_cfg_scale": body.lm_cfg_scale,
        "batch_size": body.batch_size or 1,
        # Absent steps: the model's own default, not upstream's 8 for every variant (patches/0040).
        "inference_steps": body.inference_steps or _default_steps(request, model),
        "audio_format": (config.format if config else "mp3").strip().lower(),
        "vocal_language": (config.vocal_language if config else None) or "en",
        "repainting_start": body.repainting_start,
        "audio_cover_strength": body.audio_cover_strength,
        "audio_code_string": body.audio_codes,
    }
    optional = {
        "lm_temperature": body.temperature,
        "lm_top_p": body.top_p,
        "lm_top_k": body.top_k,
        "guidance_scale": body.guidance_scale,
        "use_cot_metas": body.use_cot_metas,
        "repainting_end": body.repainting_end,
    }
    if config is not None:
        optional |= {
            "audio_duration": config.duration or None,
            "bpm": config.bpm,
            "key_scale": config.key_scale or None,
            "time_signature": config.time_signature or None,
        }
    values |= {name: value for name, value in optional.items() if value is not None}
    if body.seed is not None:
        values |= {"seed": body.seed, "use_random_seed": False}
    return values


def _renamed(error: dict) -> dict:
    """A GenerationRequest error located at the chat field the client sent."""
    loc = error["loc"]
    return error | {"loc": (CHAT_NAMES.get(str(loc[0]), loc[0]), *loc[1:])} if loc else error


def _generation(values: dict) -> GenerationRequest:
    try:
        return GenerationRequest(**values)
    except ValidationError as exc:
        errors = [_renamed(e) for e in exc.errors()]
        raise Refusal(JobErrorKind.INPUT, "; ".join(validation_lines(errors))) from None


async def _audio_inputs(request: Request, values: dict, parts: list[AudioPart]) -> list[Path]:
    """Save the parts the task reads: source then reference for a source task, else the reference."""
    if len(parts) > MAX_AUDIO_PARTS:
        raise Refusal(
            JobErrorKind.INPUT,
            f"{parts[MAX_AUDIO_PARTS].where}: at most {MAX_AUDIO_PARTS} input_audio parts "
            "(source, then reference) are read",
        )
    task = str(values.get("task_type") or "").strip().lower()
    fields = ("src_audio", "reference_audio") if task in SOURCE_TASKS else ("reference_audio",)
    if len(parts) > len(fields):
        logger.info(f"chat: {parts[len(fields)].where} ignored: a {task} job reads one input_audio part")
    saved: list[Path] = []
    try:
        for field, part in zip(fields, parts, strict=False):
            path = await _save_audio(request, part)
            saved.append(path)
            values[field] = str(path)
    except BaseException:
        discard(saved)
        raise
    return saved


@router.post(CHAT_PATH, openapi_extra=CHAT_REQUEST_SCHEMA)
async def chat_completions(request: Request):
    auth.check(request)  # the header key only: upstream's chat servers read no body token
    fields, _ = await read_body(request)
    try:
        body = ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:
        raise Refusal(JobErrorKind.INPUT, f"Invalid request format: {validation_message(exc)}") from None
    model = await _chosen_model(request, body.model)
    ignored = [name for name in NO_EFFECT if name in body.model_fields_set]
    if ignored or body.model_extra:
        logger.info(f"chat: no effect here: {shown([*ignored, *(body.model_extra or {})])}")  # clipped
    try:
        parsed = parse_messages(body.messages)
    except MessageTooLong as exc:
        raise Refusal(JobErrorKind.INPUT, str(exc)) from None
    if not (parsed.caption or parsed.lyrics or body.lyrics or body.sample_mode or parsed.audio):
        raise Refusal(JobErrorKind.INPUT, NOTHING_ASKED)
    values = _values(request, body, parsed, model)
    saved = await _audio_inputs(request, values, parsed.audio)
    try:
        generation = _generation(values)
    except BaseException:
        discard(saved)
        raise
    request.state.model = model  # a cluster routes by it
    job = await submit(request, generation, saved)
    echoed = body.model or f"{MODEL_PREFIX}/{request.app.state.model_name}"
    chat_id = completion_id()
    service = request.app.state.service
    if body.stream:
        return _Stream(_events(service, job, chat_id, echoed), media_type="text/event-stream")
    # Past ACESTEP_GENERATION_TIMEOUT, or when the client leaves, the job is cancelled (patches/0042).
    job = await service.await_job(job, TIMEOUT_S, gone=request.is_disconnected)
    return completion(chat_id, echoed, job, await run_in_threadpool(audio_parts, job))


class _Stream(StreamingResponse):
    """A stream whose events are closed however the response ends, so a client that left (a
    failed send) cancels its job as a cancelled response does."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[union-attr]


async def _events(service, job: Job, chat_id: str, model: str) -> AsyncIterator[str]:
    """Upstream's event sequence: role, "." heartbeats, content, audio, stop, [DONE]; progress as
    SSE comments in between; a failure as an error text and ``finish_reason: "error"``."""
    yield chunk(chat_id, model, {"role": "assistant", "content": ""})
    beat, shown = time.monotonic(), (-1.0, "")
    last = job
    try:
        async with aclosing(service.watch(job, TIMEOUT_S)) as snapshots:
            async for last in snapshots:
                if JobState(last.state).ended:
                    break
                progress, stage = float(last.progress or 0.0), str(last.stage or last.state)
                if stage != shown[1] or progress - shown[0] >= PROGRESS_STEP:
                    shown = (progress, stage)
                    yield progress_comment(progress, stage)
                if time.monotonic() - beat >= HEARTBEAT_S:
                    beat = time.monotonic()
                    yield chunk(chat_id, model, {"content": "."})
        job = service.outcome(last)
        audio = await run_in_threadpool(audio_parts, job)
    except Refusal as exc:
        yield chunk(chat_id, model, {"content": f"\n\nError: {exc.reason}"})
        yield chunk(chat_id, model, {}, "error")
        yield DONE
        return
    yield progress_comment(1.0, "succeeded")
    yield chunk(chat_id, model, {"content": "\n\n" + content_text(job)})
    if audio:
        yield chunk(chat_id, model, {"audio": audio})
    yield chunk(chat_id, model, {}, "stop")
    yield DONE


@router.get("/api/v1/models", dependencies=[Depends(auth.require_key)])
async def openrouter_models(request: Request) -> dict:
    """The OpenRouter-style model list: one entry per model this server or its cluster serves."""
    created = int(time.time()) - 30 * 86400
    return {
        "object": "list",
        "data": [
            {
                "id": f"{MODEL_PREFIX}/{name}",
                "name": f"ACE-Step {name}",
                "created": created,
                "description": "AI music generation model",
                "input_modalities": ["text", "audio"],
                "output_modalities": ["audio", "text"],
                "context_length": 4096,
                "max_output_length": 300,
                "pricing": {"prompt": "0", "completion": "0", "request": "0", "image": "0"},
                "supported_sampling_parameters": ["temperature", "top_p", "top_k", "seed"],
                "architecture": None,
            }
            for name in await served_models(request)
        ],
    }
