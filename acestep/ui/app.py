"""The Gradio UI: Generate, Lego / Stems, LoRA, Training (when enabled), Memory and Settings tabs
over the shared job queue."""

from __future__ import annotations

import re

import anyio
import gradio as gr

from acestep.jobs.queue import remove_paths
from acestep.memory.keep_alive import KeepAlivePolicy
from acestep.request import GenerationRequest
from acestep.tasks import AUDIO_FORMATS, TRACK_NAMES, default_caption
from acestep.ui import actions, sampling
from acestep.ui import lora as lora_ui
from acestep.ui import training as training_ui
from acestep.ui.i18n import strings

UI_TASKS = ("text2music", "cover", "repaint")
FORMATS = ("wav", *(name for name in AUDIO_FORMATS if name != "wav"))  # wav first: the UI default
# The LM accordion's controls, in the order the Generate handler receives them.
LM_FIELDS = (
    "thinking", "use_cot_caption", "use_cot_language", "sample_query", "use_format",
    "lm_temperature", "lm_cfg_scale", "lm_top_p",
)  # fmt: skip
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]<>#|])")
SLIDER_STEPS = {"lm_temperature": 0.05, "lm_cfg_scale": 0.1, "lm_top_p": 0.01}


def build_ui(state, language: str = "en") -> gr.Blocks:
    """``state`` is the server's app state (config, queue, manager, model name, variant)."""
    text = strings(language)
    with gr.Blocks(title=text["title"]) as blocks:
        gr.Markdown(f"## {text['title']} · `{state.model_name}` ({state.variant.name})")
        fmt = gr.Dropdown(
            list(FORMATS), value="wav", label=text["format"], render=False, elem_id="settings-format"
        )
        with gr.Tab(text["tab_generate"], elem_id="tab-generate"):
            gen_lora = _generate_tab(state, text, fmt)
        with gr.Tab(text["tab_lego"], elem_id="tab-lego"):
            lego_lora = _lego_tab(state, text, fmt)
        with gr.Tab(text["tab_lora"], elem_id="tab-lora") as lora_tab:
            table, summary, show_loras = lora_ui.tab(state, text)
        lora_tab.select(show_loras, None, [table, summary])
        if state.config.enable_training:  # ACESTEP_TRAINING=on; off, as upstream gates its training UI
            training_ui.tab(state, text, [gen_lora, lego_lora])
        with gr.Tab(text["tab_memory"], elem_id="tab-memory") as memory_tab:
            status, show = _memory_tab(state, text)
        memory_tab.select(show, None, status)
        with gr.Tab(text["tab_settings"], elem_id="tab-settings"):
            gr.Markdown(f"**{text['model']}:** `{state.model_name}` · **{text['language']}:** {language}")
            keep = KeepAlivePolicy.from_env(state.config.env).as_dict()["default"]  # the server's snapshot
            gr.Markdown(f"**{text['keep_alive']}:** {keep} (ACESTEP_KEEP_ALIVE)")
            fmt.render()

        async def choices():
            update = await anyio.to_thread.run_sync(lora_ui.refresh_choices, state)
            return update, update

        blocks.load(choices, None, [gen_lora, lego_lora])
    return blocks


def _outputs(text: dict, prefix: str) -> list:
    status = gr.Textbox(label=text["progress"], interactive=False, elem_id=f"{prefix}-progress")
    players = [
        gr.Audio(
            label=f"{text['results']} {i + 1}",
            type="filepath",
            interactive=False,
            elem_id=f"{prefix}-audio-{i}",
        )
        for i in range(actions.MAX_OUTPUTS)
    ]
    files = gr.File(
        label=text["results"], file_count="multiple", interactive=False, elem_id=f"{prefix}-files"
    )
    return [status, *players, files]


def _steps(value: float, default: int) -> int:
    return int(value) if value and value > 0 else default


def _slider(name: str, text: dict, interactive: bool) -> gr.Slider:
    """A slider over one of the request's LM fields, with its default and its valid range."""
    field, step = GenerationRequest.model_fields[name], SLIDER_STEPS[name]
    low = high = None
    for bound in field.metadata:  # annotated_types Ge, Gt (the least value above it) and Le
        if hasattr(bound, "ge"):
            low = bound.ge
        elif hasattr(bound, "gt"):
            low = bound.gt + step
        elif hasattr(bound, "le"):
            high = bound.le
    return gr.Slider(
        low, high, value=field.default, step=step, label=text[name], interactive=interactive,
        elem_id=f"gen-{name.replace('_', '-')}",
    )  # fmt: skip


def _lm_accordion(state, text: dict) -> list:
    """The 5 Hz LM's settings, in ``LM_FIELDS`` order; inert, with the reason, without an LM."""
    ready = state.lm_name is not None
    defaults = {name: GenerationRequest.model_fields[name].default for name in LM_FIELDS}
    with gr.Accordion(text["lm_title"], open=False, elem_id="gen-lm"):
        if ready:
            gr.Markdown(f"**{text['lm_model']}:** `{state.lm_name}`", elem_id="gen-lm-status")
        else:
            reason = MARKDOWN_SPECIALS.sub(r"\\\1", state.lm_missing)  # paths and globs read as written
            gr.Markdown(f"**{text['lm_unavailable']}:** {reason}", elem_id="gen-lm-status")
        with gr.Row():
            boxes = {
                name: gr.Checkbox(
                    defaults[name],
                    label=text[name],
                    interactive=ready,
                    elem_id=f"gen-{name.replace('use_', '').replace('_', '-')}",
                )
                for name in ("thinking", "use_cot_caption", "use_cot_language", "use_format")
            }
        query = gr.Textbox(label=text["sample_query"], interactive=ready, elem_id="gen-sample-query")
        with gr.Row():
            sliders = {name: _slider(name, text, ready) for name in SLIDER_STEPS}
    controls = boxes | sliders | {"sample_query": query}
    return [controls[name] for name in LM_FIELDS]


def _generate_tab(state, text: dict, fmt) -> None:
    with gr.Row():
        task = gr.Dropdown(list(UI_TASKS), value="text2music", label=text["task"], elem_id="gen-task")
        duration = gr.Number(value=30, label=text["duration"], elem_id="gen-duration")
        seed = gr.Number(value=-1, precision=0, label=text["seed"], elem_id="gen-seed")
        batch = gr.Slider(1, 4, value=1, step=1, label=text["batch"], elem_id="gen-batch")
        steps = gr.Number(value=0, precision=0, label=text["steps"], elem_id="gen-steps")
    caption = gr.Textbox(label=text["caption"], lines=2, elem_id="gen-caption")
    lyrics = gr.Textbox(label=text["lyrics"], lines=4)
    with gr.Row():
        source = gr.Audio(label=text["source"], type="filepath", sources=["upload"], elem_id="gen-source")
        start = gr.Number(value=0, label=text["region_start"])
        end = gr.Number(value=-1, label=text["region_end"])
        strength = gr.Slider(0, 1, value=1, step=0.05, label=text["cover_strength"])
    lm_controls = _lm_accordion(state, text)
    sampling_controls = sampling.accordions(text)
    lora, lora_scale = lora_ui.controls(state, text, "gen")
    run = gr.Button(text["generate"], variant="primary", elem_id="gen-run")
    outputs = _outputs(text, "gen")

    # The LoRA inputs, then the sampler and edit inputs, come last: Gradio API clients that send
    # the earlier inputs keep working.
    async def generate(task, duration, seed, batch, steps, caption, lyrics, source, start, end, strength, fmt,
                       *extra, progress=gr.Progress()):  # fmt: skip
        lm, rest = extra[: len(LM_FIELDS)], list(extra[len(LM_FIELDS) :])
        lora, lora_scale = (rest[:2] + [None, 1.0][len(rest[:2]) :])[:2]
        options = sampling.request_values(rest[2:])  # flow edit changes the source, on text2music too
        staged = task != "text2music" or options.get("flow_edit_morph")
        cleanup = [await actions.stage_upload(state, source, text)] if staged else []
        # Until follow() queues the job, any refusal removes the staged copy (then the job's end does).
        try:
            values = {
                "task_type": task,
                "caption": caption,
                "lyrics": lyrics,
                "audio_duration": duration,
                "seed": int(seed),
                "batch_size": int(batch),
                "inference_steps": _steps(steps, state.variant.default_steps),
                "audio_format": fmt,
                "src_audio": str(cleanup[0]) if cleanup else None,
            }
            values |= dict(zip(LM_FIELDS, lm, strict=True))  # without an LM, follow() refuses what needs it
            values |= lora_ui.request_values(lora, lora_scale)
            values |= options
            if task == "repaint":
                values |= {"repainting_start": start, "repainting_end": end}
            if task == "cover":
                values["audio_cover_strength"] = strength
            request = actions._request(values)
        except BaseException:
            remove_paths(cleanup)
            raise
        async for update in actions.follow(state, request, cleanup, text, progress):
            yield update

    inputs = [task, duration, seed, batch, steps, caption, lyrics, source, start, end, strength, fmt]
    inputs += [*lm_controls, lora, lora_scale, *sampling_controls]
    run.click(generate, inputs, outputs, concurrency_limit=None)
    return lora


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
    outputs = _outputs(text, "lego")
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
        async for update in actions.follow(state, request, [staged], text, progress):
            yield update

    inputs = [source, track, bpm, key, caption, batch, seed, steps, fmt, lora, lora_scale, global_caption]
    run.click(lego, inputs, outputs, concurrency_limit=None)
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
