"""Reading a request body the way upstream clients send it: JSON, form, multipart or bare text."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.datastructures import UploadFile

from acestep.errors import JobErrorKind
from acestep.jobs.failures import Refusal, RefusalCause
from acestep.serving.limits import text_body_cap


async def read_body(request: Request) -> tuple[dict, dict[str, UploadFile]]:
    """Fields and uploaded files. Unsupported or malformed bodies are a 4xx with the reason."""
    content_type = request.headers.get("content-type", "").lower()
    if "multipart/form-data" in content_type or "application/x-www-form-urlencoded" in content_type:
        try:
            form = await request.form(max_files=4, max_fields=200)
        except Exception as exc:  # python-multipart raises several types for a broken body
            raise Refusal(JobErrorKind.INPUT, f"malformed form body: {exc}") from None
        fields: dict = {}
        files: dict[str, UploadFile] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[key] = value
            else:
                fields[key] = value
        return fields, files
    raw = await request.body()
    cap = text_body_cap(request.app.state.config, request.url.path)
    if len(raw) > cap:
        raise Refusal(RefusalCause.TOO_LARGE, f"request body over {cap // 2**20} MiB")
    text = raw.decode("utf-8", errors="replace").strip()
    if text.startswith(("{", "[")) and "json" not in content_type and not request.app.state.config.api_key:
        # Upstream reads JSON under any content type. Without a key that would let any web page
        # queue jobs with a simple text/plain POST, so a no-key server wants JSON to say so.
        raise Refusal(
            RefusalCause.UNSUPPORTED_MEDIA,
            f"JSON body sent as {content_type or 'no content type'}; send Content-Type: application/json",
        )
    if "json" in content_type or text.startswith(("{", "[")):
        if not text:
            return {}, {}
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            hint = "" if "json" in content_type else " (send Content-Type: application/json)"
            raise Refusal(JobErrorKind.INPUT, f"invalid JSON body: {exc}{hint}") from None
        if not isinstance(data, dict):
            raise Refusal(JobErrorKind.INPUT, "JSON payload must be an object")
        return data, {}
    if not text:
        return {}, {}
    if "=" in text:
        return dict(parse_qsl(text, keep_blank_values=True)), {}
    raise Refusal(
        RefusalCause.UNSUPPORTED_MEDIA,
        f"Unsupported Content-Type: {content_type or 'none'}; send JSON or a form",
    )
