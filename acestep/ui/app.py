"""The Gradio UI: Generate (the studio), Lego / Stems, Library, LoRA, Training (when enabled),
Memory and Settings tabs over the shared job queue. This module assembles the tabs; the studio,
its results, the library and the queue panel live in their own modules."""

from __future__ import annotations

import anyio
import gradio as gr

from acestep.jobs.queue import remove_paths
from acestep.memory.keep_alive import KeepAlivePolicy
from acestep.tasks import AUDIO_FORMATS, TRACK_NAMES, default_caption
from acestep.ui import actions, queue_panel
from acestep.ui import library as library_ui
from acestep.ui import lora as lora_ui
from acestep.ui import studio as studio_ui
from acestep.ui import training as training_ui
from acestep.ui.i18n import strings
from acestep.ui.results import ResultsPanel

FORMATS = ("wav", *(name for name in AUDIO_FORMATS if name != "wav"))  # wav first: the UI default


def build_ui(state, language: str = "en") -> gr.Blocks:
    """``state`` is the server's app state (config, queue, manager, model name, variant)."""
    text = strings(language)
    with gr.Blocks(title=text["title"]) as blocks:
        gr.Markdown(f"## {text['title']} · `{state.model_name}` ({state.variant.name})")
        fmt = gr.Dropdown(
            list(FORMATS), value="wav", label=text["format"], render=False, elem_id="settings-format"
        )
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab(text["tab_generate"], id="generate", elem_id="tab-generate"):
                studio = studio_ui.build(state, text, fmt, lambda s: library_ui.examples(s, text))
                queue_panel.panel(state, text)
            with gr.Tab(text["tab_lego"], id="lego", elem_id="tab-lego"):
                lego_lora = _lego_tab(state, text, fmt)
            with gr.Tab(text["tab_library"], id="library", elem_id="tab-library"):
                library_ui.tab(state, text, studio, tabs)
            with gr.Tab(text["tab_lora"], id="lora", elem_id="tab-lora") as lora_tab:
                table, summary, show_loras = lora_ui.tab(state, text)
            lora_tab.select(show_loras, None, [table, summary])
            if state.config.enable_training:  # ACESTEP_TRAINING=on; off, as upstream gates its training UI
                training_ui.tab(state, text, [studio.lora, lego_lora])
            with gr.Tab(text["tab_memory"], id="memory", elem_id="tab-memory") as memory_tab:
                status, show = _memory_tab(state, text)
            memory_tab.select(show, None, status)
            with gr.Tab(text["tab_settings"], id="settings", elem_id="tab-settings"):
                gr.Markdown(f"**{text['model']}:** `{state.model_name}` · **{text['language']}:** {language}")
                keep = KeepAlivePolicy.from_env(state.config.env).as_dict()[
                    "default"
                ]  # the server's snapshot
                gr.Markdown(f"**{text['keep_alive']}:** {keep} (ACESTEP_KEEP_ALIVE)")
                fmt.render()

        async def choices():
            update = await anyio.to_thread.run_sync(lora_ui.refresh_choices, state)
            return update, update

        blocks.load(choices, None, [studio.lora, lego_lora])
    return blocks


def _steps(value: float, default: int) -> int:
    return int(value) if value and value > 0 else default


def _lego_tab(state, text: dict, fmt) -> None:
    with gr.Row():
        source = gr.Audio(label=text["source"], type="filepath", sources=["upload"], elem_id="lego-source")
        with gr.Column():
            track = gr.Dropdown(list(TRACK_NAMES), value="vocals", label=text["track"], elem_id="lego-track")
            bpm = gr.Number(value=120, precision=0, label=text["bpm"], elem_id="lego-bpm")
            key = gr.Textbox(label=text["key"], elem_id="lego-key")
    caption = gr.Textbox(value=default_caption("vocals"), label=text["caption"], elem_id="lego-caption")
    global_caption = gr.Textbox(value="", label=text["global_caption"], elem_id="lego-global-caption")
    with gr.Row():
        batch = gr.Slider(1, 2, value=1, step=1, label=text["batch"], elem_id="lego-batch")
        seed = gr.Number(value=-1, precision=0, label=text["seed"], elem_id="lego-seed")
        steps = gr.Number(value=0, precision=0, label=text["steps"], elem_id="lego-steps")
    lora, lora_scale = lora_ui.controls(state, text, "lego")
    run = gr.Button(text["lego_run"], variant="primary", elem_id="lego-run")
    panel = ResultsPanel(text, "lego")
    track.change(default_caption, track, caption)  # a caption preset per track

    async def lego(source, track, bpm, key, caption, batch, seed, steps, fmt, lora, lora_scale,
                   global_caption="", progress=gr.Progress()):  # fmt: skip
        staged = await actions.stage_upload(state, source, text)
        try:  # until follow() queues the job, any refusal removes the staged copy
            values = {
                "task_type": "lego",
                "track_name": track,
                "src_audio": str(staged),
                "caption": caption or default_caption(track),
                "bpm": int(bpm) if bpm else None,
                "key_scale": key.strip() or None,
                "batch_size": int(batch),
                "seed": int(seed),
                "inference_steps": _steps(steps, state.variant.default_steps),
                "audio_format": fmt,
                "global_caption": (global_caption or "").strip() or None,
            } | lora_ui.request_values(lora, lora_scale)
            request = actions._request(values)
        except BaseException:
            remove_paths([staged])
            raise
        async for update in actions.follow(state, request, [staged], text, progress, panel, source):
            yield update

    inputs = [source, track, bpm, key, caption, batch, seed, steps, fmt, lora, lora_scale, global_caption]
    run.click(lego, inputs, panel.outputs, concurrency_limit=None)
    return lora


def _memory_tab(state, text: dict):
    status = gr.Markdown(elem_id="memory-status")
    with gr.Row():
        refresh = gr.Button(text["refresh"], elem_id="memory-refresh")
        load = gr.Button(text["load"], elem_id="memory-load")
        park = gr.Button(text["park"], elem_id="memory-park")
        free = gr.Button(text["free"], variant="stop", elem_id="memory-free")

    async def show():
        return await anyio.to_thread.run_sync(actions.memory_text, state, text)

    def action(name: str):
        async def run():
            return await actions.memory_action(state, name, text)

        return run

    refresh.click(show, None, status)
    load.click(action("load"), None, status, concurrency_limit=None)
    park.click(action("park"), None, status, concurrency_limit=None)
    free.click(action("free"), None, status, concurrency_limit=None)
    return status, show
