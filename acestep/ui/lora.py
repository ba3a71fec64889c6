"""The UI's LoRA parts: an adapter picker and scale for the Generate and Lego tabs, and a LoRA tab
with the folder's catalog (name, base model, rank), the server's default and what the model holds.

They read the same ``LoraSelection`` as the REST API and ask the memory manager to unload; the
adapters themselves are applied by the GPU worker, per job.
"""

from __future__ import annotations

import json

import anyio
import gradio as gr

from acestep.errors import JobError
from acestep.jobs.failures import command_refusal
from acestep.jobs.waits import CommandTimeout, run_command
from acestep.lora.catalog import LoraError
from acestep.lora.selection import resident
from acestep.request import MAX_LORA_SCALE

COLUMNS = ("name", "format", "base_variant", "rank", "alpha", "modules", "compatible")


def names(state) -> list[str]:
    """Adapters a request may name here: those made for this model (or not saying)."""
    return [entry["name"] for entry in state.loras.catalog()["loras"] if entry["compatible"]]


def controls(state, text: dict, prefix: str) -> tuple[gr.Dropdown, gr.Slider]:
    with gr.Row():
        picker = gr.Dropdown(
            names(state), value=[], multiselect=True, label=text["lora"], elem_id=f"{prefix}-lora"
        )
        scale = gr.Slider(
            0, MAX_LORA_SCALE, value=1.0, step=0.05, label=text["lora_scale"], elem_id=f"{prefix}-lora-scale"
        )
    return picker, scale


def request_values(picked: list[str] | None, scale: float) -> dict:
    """Nothing picked: the server's default applies (as for a REST request naming none)."""
    return {"lora": list(picked), "lora_scale": float(scale)} if picked else {}


def refresh_choices(state):
    """On page load: the folder may have changed since the server started."""
    return gr.update(choices=names(state))


def catalog_text(state, text: dict) -> tuple[list[list], str]:
    catalog = state.loras.catalog()
    rows = [[entry[column] for column in COLUMNS] for entry in catalog["loras"]]
    held = resident(state.manager.get_status())
    if isinstance(held, list):  # a cluster: every live worker's adapters
        held = {"loaded": [a for w in held for a in (w["adapters"] or {}).get("loaded", [])]}
    default = catalog["default"]
    lines = [
        f"**{text['lora_folder']}:** `{catalog['directory']}`",
        f"**{text['lora_default']}:** "
        + (", ".join(f"{a['name']} x{a['scale']:g}" for a in default["adapters"]) or "-")
        + ("" if default["enabled"] else " (off)"),
        f"**{text['lora_resident']}:** "
        + (", ".join(f"{a['name']} ({a['bytes'] / 2**20:.1f} MiB)" for a in held["loaded"]) or "-"),
    ]
    if catalog["problems"]:
        lines.append(
            f"**{text['lora_unusable']}:**\n```json\n{json.dumps(catalog['problems'], indent=1)}\n```"
        )
    return rows, "\n\n".join(lines)


def tab(state, text: dict) -> tuple[gr.Dataframe, gr.Markdown, object]:
    """The LoRA tab; returns its table and summary, and the handler that fills them."""
    table = gr.Dataframe(headers=list(COLUMNS), interactive=False, elem_id="lora-table")
    summary = gr.Markdown(elem_id="lora-status")
    with gr.Row():
        refresh = gr.Button(text["lora_refresh"], elem_id="lora-refresh")
        unload = gr.Button(text["lora_unload"], variant="stop", elem_id="lora-unload")

    async def show():
        return await anyio.to_thread.run_sync(catalog_text, state, text)

    async def unload_all():
        # It waits for the running job: bounded and off the shared thread pool, like REST and MCP.
        try:
            await run_command(state.loras.unload, state.manager, None)
        except (CommandTimeout, LoraError, JobError) as exc:
            raise gr.Error(command_refusal(exc).reason) from None  # REST's words (jobs/failures.py)
        return await show()

    refresh.click(show, None, [table, summary])
    unload.click(unload_all, None, [table, summary], concurrency_limit=None)
    return table, summary, show
