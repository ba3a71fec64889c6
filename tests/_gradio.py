"""Calling the UI's Gradio API over HTTP, as any client (or attacker) can."""

from __future__ import annotations

from _server import Server


def file_input(path: str) -> dict:
    """A Gradio file input naming ``path`` (an upload's path, or any path a client makes up)."""
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def gradio_call(server: Server, api_name: str, data: list, timeout: float = 120) -> tuple[str, str]:
    """A Gradio API call to its end: the last SSE event and its data."""
    started = server.client.post(f"/gradio_api/call/{api_name}", json={"data": data}, timeout=timeout)
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    event = last = ""
    with server.client.stream("GET", f"/gradio_api/call/{api_name}/{event_id}", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                last = line.split(":", 1)[1].strip()
                if event in ("complete", "error"):
                    break
    return event, last


def sampling_defaults() -> list:
    """The Generate handler's inputs after the LoRA ones (the sampler and edit inputs, then the
    studio's others), each at its default: a raw Gradio API call must send every input."""
    from acestep.request import GenerationRequest
    from acestep.ui.sampling import TEXT_FIELDS, UI_FIELDS
    from acestep.ui.studio import EXTRA_FIELDS

    fields = GenerationRequest.model_fields
    sampler = [
        "auto" if name == "dcw_enabled" else "" if name in TEXT_FIELDS else fields[name].default
        for name in UI_FIELDS
    ]
    studio = {"track_name": "vocals", "track_classes": [], "key_scale": "", "audio_code_string": ""}
    return sampler + [studio.get(name, fields[name].default) for name in EXTRA_FIELDS]
