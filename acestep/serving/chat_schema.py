"""The body of ``POST /v1/chat/completions``: upstream's chat request, field for field.

Unknown fields are accepted and ignored, as upstream does (OpenAI clients send many). The bounds
here are the chat protocol's own (``temperature`` 0..2, ...); every generation bound is checked
again by ``GenerationRequest``, as for ``/release_task``. Defaults are the ones the route uses
(docs/api.md, "Chat completions"); ``inference_steps`` absent means the model's own default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from acestep.fields import BY_NAME
from acestep.tasks import MAX_BATCH_SIZE

NO_EFFECT_DOC = "accepted for OpenAI clients; no effect here"


class AudioConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    duration: float | None = None
    format: str = "mp3"
    bpm: int | None = None
    key_scale: str | None = None
    time_signature: str | None = None
    vocal_language: str | None = None  # absent or "": "en", as upstream
    instrumental: bool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"]
    content: str | list[Any] | None = None
    name: str | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="absent: this server's default model")
    messages: list[ChatMessage] = Field(
        description="the chat: the last user message holds the caption, lyrics and any input audio"
    )
    modalities: list[str] | None = Field(None, description=NO_EFFECT_DOC)
    audio_config: AudioConfig | None = Field(
        None, description="duration, format, bpm, key_scale, time_signature, vocal_language, instrumental"
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="the LM's sampling temperature")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="the LM's nucleus sampling")
    top_k: int | None = Field(None, ge=0, description="the LM's top-k sampling")
    max_tokens: int | None = Field(None, ge=1, description=NO_EFFECT_DOC)
    stream: bool = Field(False, description="true: server-sent chunks with progress, then the audio")
    stop: str | list[str] | None = Field(None, description=NO_EFFECT_DOC)
    seed: int | str | None = None
    thinking: bool | None = None
    guidance_scale: float | None = None
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE)
    lyrics: str = ""
    sample_mode: bool = False
    use_format: bool = False
    use_cot_caption: bool = True
    use_cot_language: bool = True
    use_cot_metas: bool | None = None
    task_type: str = "text2music"
    repainting_start: float = 0.0
    repainting_end: float | None = None
    audio_cover_strength: float = 1.0
    audio_codes: str = Field("", description=BY_NAME["audio_codes"].description)
    cover_noise_strength: float = Field(0.0, description=NO_EFFECT_DOC)
    inference_steps: int | None = Field(None, description="absent: the model variant's default steps")
    infer_method: str = Field("ode", description=NO_EFFECT_DOC)
    lm_cfg_scale: float = 2.0


def _inline(node: Any, defs: dict) -> Any:
    """The schema with pydantic's ``$defs`` references replaced by their bodies: an OpenAPI
    document has no ``$defs`` beside a route's body."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _schema() -> dict:
    """The body's schema; a field that is also a /release_task field is described as the field
    table describes it."""
    schema = ChatCompletionRequest.model_json_schema()
    for name, prop in schema["properties"].items():
        if "description" not in prop and name in BY_NAME:
            prop["description"] = BY_NAME[name].description
    return _inline(schema, schema.get("$defs", {}))


CHAT_REQUEST_SCHEMA = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _schema()}}}
}
