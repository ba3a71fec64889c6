"""The Generate tab as a studio: a task selector over every task the served model runs, the fields
each task uses (the others hidden), the advanced ones folded, and the results panel.

Ranges and defaults are the request's own (``GenerationRequest``); which fields a task uses is
declared once, in ``TASK_FIELDS``; only values moved off the request's default reach the request.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

import gradio as gr

from acestep.jobs.queue import remove_paths
from acestep.request import VOCAL_LANGUAGES, GenerationRequest
from acestep.tasks import (
    COVER_TASKS,
    MAX_BATCH_SIZE,
    MAX_BPM,
    MIN_BPM,
    SOURCE_TASKS,
    TASK_TYPES,
    TRACK_NAMES,
    default_caption,
    flow_edit_applies,
    source_used,
)
from acestep.ui import actions, sampling
from acestep.ui import lora as lora_ui
from acestep.ui.results import TIME_SIGNATURE_NAMES, ResultsPanel

# The LM accordion's controls, in the order the Generate handler receives them.
LM_FIELDS = (
    "thinking", "use_cot_caption", "use_cot_language", "sample_query", "use_format",
    "lm_temperature", "lm_cfg_scale", "lm_top_p",
)  # fmt: skip
# The Generate handler's first inputs (then the output format, the LM, LoRA and sampler inputs).
HEAD_FIELDS = (
    "task_type", "audio_duration", "seed", "batch_size", "inference_steps", "caption", "lyrics",
    "src_audio", "repainting_start", "repainting_end", "audio_cover_strength",
)  # fmt: skip
# The studio's other fields, received last: Gradio API clients that send the earlier inputs keep
# working (gradio_client fills these with their defaults).
EXTRA_FIELDS = (
    "instrumental", "vocal_language", "bpm", "key_scale", "time_signature", "guidance_scale", "shift",
    "audio_code_string", "reference_audio", "track_name", "track_classes",
)  # fmt: skip
# The fields only some tasks use (docs/tasks.md); every other field applies to every task.
TASK_FIELDS = {
    "src_audio": SOURCE_TASKS,  # and a flow edit's (``applies``)
    "audio_duration": frozenset({"text2music", *COVER_TASKS}),  # the others take the source's length
    "audio_code_string": frozenset({"text2music", *COVER_TASKS}),  # lego refuses codes
    "audio_cover_strength": COVER_TASKS,
    "repainting_start": frozenset({"repaint", "lego"}),  # lego: the stem's window
    "repainting_end": frozenset({"repaint", "lego"}),
    "track_name": frozenset({"lego", "extract"}),
    "track_classes": frozenset({"complete"}),
}
SEND_TARGETS = ("cover", "repaint", "lego", "extract", "complete")  # tasks a result may feed
SLIDER_STEPS = {
    "lm_temperature": 0.05, "lm_cfg_scale": 0.1, "lm_top_p": 0.01, "guidance_scale": 0.5, "shift": 0.1,
    "audio_cover_strength": 0.05,
}  # fmt: skip
ELEM_IDS = {
    "audio_duration": "gen-duration", "src_audio": "gen-source", "reference_audio": "gen-reference",
    "batch_size": "gen-batch", "inference_steps": "gen-steps", "task_type": "gen-task",
    "audio_cover_strength": "gen-cover-strength", "audio_code_string": "gen-audio-codes",
}  # fmt: skip
UI_BATCH = 1  # one take unless asked (the request's default of 2 doubles every run's time)
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]<>#|])")


def applies(name: str, task: str, flow_edit: bool = False) -> bool:
    """Whether ``task`` uses the request field ``name`` (a flow edit reads the source too)."""
    if name == "src_audio" and flow_edit_applies(task, flow_edit):
        return True
    return task in TASK_FIELDS.get(name, TASK_TYPES)


def elem_id(name: str) -> str:
    """``gen-`` and the field's name, or the shorter id the tab had before the studio."""
    return ELEM_IDS.get(name, f"gen-{name.replace('_', '-')}")


def slider(name: str, label: str, **options) -> gr.Slider:
    """A slider over a request field, with its default and its valid range."""
    step = SLIDER_STEPS[name]
    low, high = sampling.bounds(name, step)
    default = GenerationRequest.model_fields[name].default
    return gr.Slider(low, high, value=default, step=step, label=label, elem_id=elem_id(name), **options)


@dataclass
class Studio:
    """The Generate tab's inputs, keyed by GenerationRequest field name."""

    fields: dict[str, gr.components.Component]
    lm: list = field(default_factory=list)
    sampling: list = field(default_factory=list)
    lora: gr.Dropdown | None = None
    lora_scale: gr.Slider | None = None
    run: gr.Button | None = None
    panel: ResultsPanel | None = None

    def restore(self, values: dict) -> list:
        """Updates for ``list(self.fields.values())``, in that order, from a request dict (missing
        keys: unchanged). A src_audio / reference_audio value is a path the UI may serve; None clears."""
        return [_shown(name, values[name]) if name in values else gr.update() for name in self.fields]


def _shown(name: str, value):
    """A request value as its control shows it."""
    if name == "seed":
        try:
            return int(str(value).split(",")[0])
        except ValueError:
            return gr.update()
    if name == "time_signature":
        return str(value or "")  # the beats, as the request stores them
    if name == "track_classes":
        return list(value or [])
    if name == "inference_steps" and value is None:
        return 0
    return value


def build(state, text: dict, fmt: gr.Dropdown, extras=None) -> Studio:
    """The studio's layout and handlers; ``extras(studio)`` adds parts (examples) above Run."""
    tasks = [task for task in TASK_TYPES if task in state.variant.supported_tasks]
    controls = _controls(text, tasks)
    studio = Studio(controls)
    with gr.Accordion(text["metadata_title"], open=False, elem_id="gen-metadata"):
        with gr.Row():
            for name in ("bpm", "key_scale", "time_signature", "vocal_language", "instrumental"):
                controls[name].render()
    with gr.Accordion(text["reference_title"], open=False, elem_id="gen-reference-codes"):
        with gr.Row():
            controls["reference_audio"].render()
            controls["audio_code_string"].render()
    with gr.Accordion(text["diffusion_title"], open=False, elem_id="gen-diffusion"):
        with gr.Row():
            controls["guidance_scale"].render()
            controls["shift"].render()
    studio.lm = _lm_accordion(state, text)
    studio.sampling = sampling.accordions(text)
    studio.lora, studio.lora_scale = lora_ui.controls(state, text, "gen")
    if extras is not None:
        extras(studio)
    studio.run = gr.Button(text["generate"], variant="primary", elem_id="gen-run")
    studio.panel = ResultsPanel(text, "gen", tuple(t for t in SEND_TARGETS if t in tasks))
    studio.panel.connect(controls["task_type"], controls["src_audio"], controls["reference_audio"])
    _wire(state, text, fmt, studio)
    return studio


def _controls(text: dict, tasks: list[str]) -> dict:
    """Every field's control, laid out for the common ones; the folded ones are made unrendered."""
    fields = GenerationRequest.model_fields
    task = "text2music"
    shown = {name: applies(name, task) for name in TASK_FIELDS}
    c: dict = {}
    with gr.Row():
        c["task_type"] = gr.Dropdown(tasks, value=task, label=text["task"], elem_id="gen-task")
        c["track_name"] = gr.Dropdown(list(TRACK_NAMES), value="vocals", label=text["track"],
                                      visible=shown["track_name"], elem_id=elem_id("track_name"))  # fmt: skip
        c["track_classes"] = gr.Dropdown(list(TRACK_NAMES), value=[], multiselect=True,
                                         label=text["track_classes"], visible=shown["track_classes"],
                                         elem_id=elem_id("track_classes"))  # fmt: skip
    with gr.Row():
        c["audio_duration"] = gr.Number(value=fields["audio_duration"].default, label=text["duration"],
                                        visible=shown["audio_duration"], elem_id="gen-duration")  # fmt: skip
        c["seed"] = gr.Number(value=-1, precision=0, label=text["seed"], elem_id="gen-seed")
        c["batch_size"] = gr.Slider(1, MAX_BATCH_SIZE, value=UI_BATCH, step=1, label=text["batch"],
                                    elem_id="gen-batch")  # fmt: skip
        c["inference_steps"] = gr.Number(value=0, precision=0, label=text["steps"], elem_id="gen-steps")
    c["caption"] = gr.Textbox(label=text["caption"], lines=2, elem_id="gen-caption")
    c["lyrics"] = gr.Textbox(label=text["lyrics"], lines=4, elem_id="gen-lyrics")
    with gr.Row():
        c["src_audio"] = gr.Audio(label=text["source"], type="filepath", sources=["upload"],
                                  visible=shown["src_audio"], elem_id="gen-source")  # fmt: skip
        with gr.Column():
            c["repainting_start"] = gr.Number(value=fields["repainting_start"].default,
                                              label=text["region_start"], visible=shown["repainting_start"],
                                              elem_id=elem_id("repainting_start"))  # fmt: skip
            c["repainting_end"] = gr.Number(value=fields["repainting_end"].default, label=text["region_end"],
                                            visible=shown["repainting_end"],
                                            elem_id=elem_id("repainting_end"))  # fmt: skip
            c["audio_cover_strength"] = slider(
                "audio_cover_strength", text["cover_strength"], visible=shown["audio_cover_strength"]
            )
    # Folded in accordions by ``build``: made here, rendered there.
    c["bpm"] = gr.Number(value=None, precision=0, minimum=MIN_BPM, maximum=MAX_BPM, label=text["bpm"],
                         render=False, elem_id="gen-bpm")  # fmt: skip
    c["key_scale"] = gr.Textbox(label=text["key"], render=False, elem_id="gen-key-scale")
    signatures = [(text["auto"], ""), *((name, beats) for beats, name in TIME_SIGNATURE_NAMES.items())]
    c["time_signature"] = gr.Dropdown(signatures, value="", label=text["time_signature"], render=False,
                                      elem_id="gen-time-signature")  # fmt: skip
    c["vocal_language"] = gr.Dropdown(sorted(VOCAL_LANGUAGES), value=fields["vocal_language"].default,
                                      label=text["vocal_language"], render=False,
                                      elem_id="gen-vocal-language")  # fmt: skip
    c["instrumental"] = gr.Checkbox(fields["instrumental"].default, label=text["instrumental"], render=False,
                                    elem_id="gen-instrumental")  # fmt: skip
    c["reference_audio"] = gr.Audio(label=text["reference_audio"], type="filepath", sources=["upload"],
                                     render=False, elem_id="gen-reference")  # fmt: skip
    c["audio_code_string"] = gr.Textbox(label=text["audio_codes"], lines=3, render=False,
                                        visible=shown["audio_code_string"],
                                        elem_id=elem_id("audio_code_string"))  # fmt: skip
    c["guidance_scale"] = slider("guidance_scale", text["guidance_scale"], render=False)
    c["shift"] = slider("shift", text["shift"], render=False)
    return {name: c[name] for name in (*HEAD_FIELDS, *EXTRA_FIELDS)}


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
            sliders = {
                name: slider(name, text[name], interactive=ready)
                for name in LM_FIELDS
                if name in SLIDER_STEPS
            }
    controls = boxes | sliders | {"sample_query": query}
    return [controls[name] for name in LM_FIELDS]


def extra_values(values: tuple | list) -> dict:
    """The ``EXTRA_FIELDS`` a client set: those moved off the request's default (reference audio
    is staged by the handler)."""
    out: dict = {}
    for name, value in zip(EXTRA_FIELDS, values, strict=False):
        if name == "reference_audio":
            continue
        if isinstance(value, str):
            value = value.strip()
        if name == "track_classes":
            value = list(value or []) or None
        if name == "bpm" and not value:
            value = None
        if value is not None and value != GenerationRequest.model_fields[name].default:
            out[name] = value
    return out


def _steps(value: float | None, default: int) -> int:
    return int(value) if value and value > 0 else default


def _wire(state, text: dict, fmt, studio: Studio) -> None:
    c = studio.fields
    flow_edit = studio.sampling[sampling.UI_FIELDS.index("flow_edit_morph")]
    toggled = list(TASK_FIELDS)

    def show(task: str, flowing: bool):
        return [gr.update(visible=applies(name, task, flowing)) for name in toggled]

    for trigger in (c["task_type"], flow_edit):
        trigger.change(show, [c["task_type"], flow_edit], [c[name] for name in toggled], queue=False)

    async def generate(task, duration, seed, batch, steps, caption, lyrics, source, start, end, strength, fmt,
                       *extra, progress=gr.Progress()):  # fmt: skip
        lm, rest = extra[: len(LM_FIELDS)], list(extra[len(LM_FIELDS) :])
        lora, lora_scale = (rest[:2] + [None, 1.0][len(rest[:2]) :])[:2]
        options = sampling.request_values(rest[2 : 2 + len(sampling.UI_FIELDS)])
        added = rest[2 + len(sampling.UI_FIELDS) :]
        chosen = extra_values(added)
        at = EXTRA_FIELDS.index("reference_audio")
        reference = added[at] if len(added) > at else None
        flowing = bool(options.get("flow_edit_morph"))
        codes = bool(chosen.get("audio_code_string")) and applies("audio_code_string", task)
        cleanup = []
        # Until follow() queues the job, any refusal removes the staged copies (then the job's end does).
        try:
            if source_used(task, codes, flowing):
                cleanup.append(await actions.stage_upload(state, source, text))
            staged_source = str(cleanup[0]) if cleanup else None
            if reference:
                cleanup.append(await actions.stage_upload(state, reference, text))
            if task == "lego" and not (caption or "").strip():
                caption = default_caption(chosen.get("track_name") or "vocals")
            values = {
                "task_type": task,
                "caption": caption,
                "lyrics": lyrics,
                "audio_duration": duration,
                "seed": int(seed) if seed is not None else -1,
                "batch_size": int(batch),
                "inference_steps": _steps(steps, state.variant.default_steps),
                "audio_format": fmt,
                "src_audio": staged_source,
                "reference_audio": str(cleanup[-1]) if reference else None,
                "repainting_start": start,
                "repainting_end": end,
                "audio_cover_strength": strength,
            }
            values |= dict(zip(LM_FIELDS, lm, strict=True))  # without an LM, follow() refuses what needs it
            values |= lora_ui.request_values(lora, lora_scale)
            values |= options | chosen
            request = actions._request({k: v for k, v in values.items() if applies(k, task, flowing)})
        except BaseException:
            remove_paths(cleanup)
            raise
        heard = source if task in SOURCE_TASKS else None  # the A/B switch's "source"
        async for update in actions.follow(state, request, cleanup, text, progress, studio.panel, heard):
            yield update

    _name_inputs(generate, (*LM_FIELDS, "lora", "lora_scale", *sampling.UI_FIELDS, *EXTRA_FIELDS))
    inputs = [*(c[name] for name in HEAD_FIELDS), fmt, *studio.lm, studio.lora, studio.lora_scale]
    inputs += [*studio.sampling, *(c[name] for name in EXTRA_FIELDS)]
    studio.run.click(generate, inputs, studio.panel.outputs, concurrency_limit=None, api_name="generate")


def _name_inputs(handler, names: tuple[str, ...]) -> None:
    """Name the handler's ``*extra`` inputs, each with a None default, in the signature Gradio reads:
    gradio_client then lets a caller leave out an input whose control starts empty (BPM, reference
    audio), as callers that send only the older inputs do."""
    params = list(inspect.signature(handler).parameters.values())
    named = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keyword = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]  # progress
    extra = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in names]
    handler.__signature__ = inspect.Signature(named + extra + keyword)
