"""The Generate tab's queue panel: the jobs queued and running, and a cancel control.

The table is refreshed by a ``gr.Timer`` (which runs in the browser, so only while the page is
open) and by its button. Cancel goes the way ``POST /v1/cancel`` goes (``queue.cancel``): a queued
job ends at once as cancelled, a running one stops at its next progress report.
"""

from __future__ import annotations

import anyio
import gradio as gr

REFRESH_S = 2.0


def _rows(state) -> list[list] | None:
    """The table's rows; None where the queue does not list its jobs (a cluster's)."""
    active = getattr(state.queue, "active", None)
    if active is None:
        return None
    return [[j["id"], j["task"], j["state"], j["position"], f"{j['progress'] * 100:.0f}%"] for j in active()]


def panel(state, text: dict) -> None:
    """Builds the panel in the caller's layout (under the Generate tab's results)."""
    with gr.Accordion(text["queue_title"], open=True, elem_id="queue-panel"):
        table = gr.Dataframe(
            headers=[
                text["queue_id"],
                text["task"],
                text["queue_state"],
                text["queue_position"],
                text["queue_progress"],
            ],
            datatype=["str", "str", "str", "number", "str"],
            value=[],
            type="array",
            interactive=False,
            elem_id="queue-table",
        )
        with gr.Row():
            chosen = gr.Textbox(label=text["queue_id"], max_lines=1, elem_id="queue-job", scale=3)
            cancel = gr.Button(text["queue_cancel"], variant="stop", elem_id="queue-cancel", scale=1)
            refresh = gr.Button(text["refresh"], elem_id="queue-refresh", scale=1)
        outcome = gr.Markdown(elem_id="queue-outcome")
        note = gr.Markdown(elem_id="queue-note")

    async def show():
        # state.queue exists once the server has started (after this is built): read it here.
        rows = await anyio.to_thread.run_sync(_rows, state)
        return gr.Dataframe(value=[], visible=False) if rows is None else rows, text[
            "queue_unlisted"
        ] if rows is None else ""

    def pick(evt: gr.SelectData):
        row = evt.row_value or []
        return row[0] if row else gr.update()

    async def stop(task_id: str):
        task_id = (task_id or "").strip()
        if not task_id:
            raise gr.Error(text["library_pick"])
        answer = await anyio.to_thread.run_sync(state.queue.cancel, task_id)
        return f"`{task_id}`: {answer}", *(await show())

    listed = [table, note]
    gr.Timer(REFRESH_S).tick(show, None, listed, show_progress="hidden", queue=False)
    refresh.click(show, None, listed, show_progress="hidden")
    table.select(pick, None, chosen)
    cancel.click(stop, chosen, [outcome, *listed])
