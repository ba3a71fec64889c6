"""The Library tab (the finished jobs recorded in the results folder, acestep/jobs/library.py) and
the Generate tab's examples and random sample (acestep/examples.py).

The library is read from the folder on every refresh, so it lists the jobs of earlier server runs
too, until retention removes their folders. Restoring a job fills the studio's inputs from its
request (with the job's own copy of its source audio) and switches to the Generate tab.
"""

from __future__ import annotations

import json
import random
import time
from functools import cache
from pathlib import Path

import anyio
import gradio as gr

from acestep.examples import EXAMPLES
from acestep.jobs.library import INPUT_FIELDS, RATINGS, Library
from acestep.request import GenerationRequest

PLAYERS = 2  # audio players for a selected job (every file is in the file list)
CAPTION_SHOWN = 80  # characters of a caption in the table
# What an example or the random sample sets in the studio (GenerationRequest field names).
EXAMPLE_FIELDS = (
    "caption",
    "lyrics",
    "bpm",
    "audio_duration",
    "key_scale",
    "time_signature",
    "vocal_language",
)


def example_values(example: dict) -> dict:
    """An example (upstream's REST names) as GenerationRequest field values."""
    request = GenerationRequest.model_validate(example)
    return request.model_dump(include=set(EXAMPLE_FIELDS))


def _library(state) -> Library:
    return Library(state.config.results_dir, forget=getattr(state.queue, "forget", None))


def _row(record: dict) -> list:
    caption = str(record.get("request", {}).get("caption") or "")
    shown = caption if len(caption) <= CAPTION_SHOWN else caption[: CAPTION_SHOWN - 1] + "…"
    finished = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("finished") or 0))
    seeds = ", ".join(map(str, record.get("seeds") or []))
    rating = record.get("rating")
    return [
        finished,
        record.get("task_type", ""),
        record.get("model", ""),
        shown,
        seeds,
        rating or "",
        record["id"],
    ]


@cache
def _defaults() -> dict:
    return GenerationRequest().model_dump(mode="json")


def _changed(request: dict) -> dict:
    """The request's values moved off their defaults (what the job asked for; job.json has all)."""
    defaults = _defaults()
    return {k: v for k, v in request.items() if k not in defaults or v != defaults[k]}


def _inside(path: str, folder) -> bool:
    """Whether ``path`` lies in ``folder`` (the UI's one allowed path: acestep/cli/ui.py)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def _filter(values: list[str], chosen: str | None, everything: str) -> gr.Dropdown:
    choices = [(everything, "")] + [(v, v) for v in values]
    return gr.Dropdown(choices=choices, value=chosen if chosen in values else "")


def tab(state, text: dict, studio, tabs) -> None:
    """Builds the Library tab's contents inside the caller's ``gr.Tab``."""
    everything = [(text["library_all"], "")]
    with gr.Row():
        task = gr.Dropdown(everything, value="", label=text["task"], elem_id="library-task", scale=2)
        model = gr.Dropdown(everything, value="", label=text["model"], elem_id="library-model", scale=2)
        refresh = gr.Button(text["refresh"], elem_id="library-refresh", scale=1)
    headers = [text[k] for k in ("library_time", "task", "model", "library_caption", "library_seeds")]
    table = gr.Dataframe(
        headers=[*headers, text["library_rating"], "id"],
        value=[],
        type="array",
        interactive=False,
        wrap=True,
        label=text["library_jobs"],
        elem_id="library-table",
    )
    chosen = gr.State(None)  # the selected job's id
    with gr.Row():
        players = [
            gr.Audio(
                type="filepath",
                interactive=False,
                label=f"{text['results']} {i + 1}",
                elem_id=f"library-audio-{i}",
            )
            for i in range(PLAYERS)
        ]
    with gr.Row():
        seeds = gr.Textbox(label=text["library_seeds"], interactive=False, elem_id="library-seeds")
        rating = gr.Radio(list(RATINGS), label=text["library_rating"], elem_id="library-rating")
    # A text box, not gr.Code: its whole value is in the page (the code editor draws only the lines
    # in view), so it can be copied or read in full.
    request = gr.Textbox(
        label=text["library_request"],
        lines=8,
        max_lines=24,
        interactive=False,
        buttons=["copy"],
        autoscroll=False,
        elem_id="library-request",
    )
    files = gr.File(
        label=text["library_files"], file_count="multiple", interactive=False, elem_id="library-files"
    )
    with gr.Row():
        restore = gr.Button(text["library_restore"], variant="primary", elem_id="library-restore")
        confirm = gr.Checkbox(label=text["library_confirm"], value=False, elem_id="library-confirm")
        delete = gr.Button(text["library_delete"], variant="stop", elem_id="library-delete")
    detail = [chosen, *players, seeds, rating, request, files, confirm]

    def listing(task_name: str | None, model_name: str | None):
        library = _library(state)
        records = library.entries()
        tasks = sorted({r["task_type"] for r in records if r.get("task_type")})
        models = sorted({r["model"] for r in records if r.get("model")})
        shown = [
            r
            for r in records
            if (not task_name or r.get("task_type") == task_name)
            and (not model_name or r.get("model") == model_name)
        ]
        return (
            [_row(r) for r in shown],
            _filter(tasks, task_name, text["library_all"]),
            _filter(models, model_name, text["library_all"]),
        )

    async def show(task_name, model_name):
        return await anyio.to_thread.run_sync(listing, task_name, model_name)

    def cleared() -> list:
        return [None, *([None] * PLAYERS), "", None, "", None, False]

    def opened(record: dict | None) -> list:
        if record is None:
            gr.Warning(text["library_gone"])
            return cleared()
        paths = record["paths"]
        players_now = [paths[i] if i < len(paths) else None for i in range(PLAYERS)]
        seed_text = ", ".join(map(str, record.get("seeds") or []))
        body = json.dumps(_changed(record["request"]), indent=2, ensure_ascii=False)
        return [record["id"], *players_now, seed_text, record.get("rating"), body, paths or None, False]

    async def select(evt: gr.SelectData):
        row = evt.row_value or []
        if not row:
            return cleared()
        return opened(await anyio.to_thread.run_sync(_library(state).get, str(row[-1])))

    def need(job_id: str | None) -> dict:
        if not job_id:
            raise gr.Error(text["library_pick"])
        record = _library(state).get(job_id)
        if record is None:
            raise gr.Error(text["library_gone"])
        return record

    def restored(job_id):
        record = need(job_id)
        values = dict(record["request"])
        for name in INPUT_FIELDS:  # the page is served files of the results folder only
            if values.get(name) and not _inside(values[name], state.config.results_dir):
                values[name] = None
        if record.get("seeds"):  # the seeds the job used (a random seed included), to hear it again
            values["seed"] = ", ".join(map(str, record["seeds"]))
        return [*studio.restore(values), gr.Tabs(selected="generate")]

    async def rate(job_id, stars):
        if not job_id:
            return
        try:
            await anyio.to_thread.run_sync(
                _library(state).rate, job_id, None if stars is None else int(stars)
            )
        except (KeyError, ValueError) as exc:
            raise gr.Error(text["library_gone"] if isinstance(exc, KeyError) else str(exc)) from None

    async def remove(job_id, sure, task_name, model_name):
        if not job_id or not sure:  # a notice, not gr.Error: an error would cover the checkbox
            gr.Warning(text["library_pick" if not job_id else "library_need_confirm"])
            return [gr.skip()] * (len(detail) + len(listed))
        need(job_id)
        await anyio.to_thread.run_sync(_library(state).delete, job_id)
        gr.Info(text["library_deleted"])
        return [*cleared(), *(await show(task_name, model_name))]

    listed = [table, task, model]
    refresh.click(show, [task, model], listed)
    task.input(show, [task, model], listed)
    model.input(show, [task, model], listed)
    tabs.select(show, [task, model], listed)  # opening the tab (any tab change: the list is small)
    table.select(select, None, detail)
    rating.input(rate, [chosen, rating], None).then(show, [task, model], listed)
    restore.click(restored, chosen, [*studio.fields.values(), tabs])
    delete.click(remove, [chosen, confirm, task, model], [*detail, *listed])


def examples(studio, text: dict) -> None:
    """Ready requests (a table of examples) and a random-sample button that fill the studio."""
    fields = [name for name in EXAMPLE_FIELDS if name in studio.fields]
    values = [example_values(example) for example in EXAMPLES]
    gr.Examples(
        examples=[[v[name] for name in fields] for v in values],
        inputs=[studio.fields[name] for name in fields],
        label=text["examples"],
        example_labels=[v["caption"] for v in values],
        elem_id="examples",
    )
    sample = gr.Button(text["random_sample"], elem_id="random-sample")

    def pick():
        return studio.restore(random.choice(values))

    sample.click(pick, None, list(studio.fields.values()))
