"""The results of a job in the UI: one group per batch item, shown only when filled, with its
player, a spectrogram, its seed and metas; for lego and extract an A/B switch between the stem,
the stem mixed into its source and the source; and "send to", which makes a result the studio's
next source (or its reference audio), so runs chain.

``actions.follow`` turns a job into these updates; this module only lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from acestep.request import TIME_SIGNATURES
from acestep.result import GenerationResult
from acestep.tasks import MAX_BATCH_SIZE
from acestep.ui import mixdown, spectrogram

MAX_OUTPUTS = MAX_BATCH_SIZE  # a player per batch item
STEM_TASKS = frozenset({"lego", "extract"})  # results heard against their source (A/B)
VIEWS = ("stem", "mix", "source")
REFERENCE = "reference"  # the send-to target that fills the reference (style) audio
# The request stores a time signature's beats ("4"); people read "4/4".
TIME_SIGNATURE_NAMES = {beats: name for name, beats in TIME_SIGNATURES.items() if "/" in name}


@dataclass
class Slot:
    """One batch item's group; ``paths`` (server-side) holds what each A/B view plays."""

    group: gr.Group
    meta: gr.Markdown
    player: gr.Audio
    picture: gr.Image
    view: gr.Radio
    paths: gr.State
    target: gr.Dropdown | None
    send: gr.Button | None

    @property
    def outputs(self) -> list:
        return [self.group, self.meta, self.player, self.picture, self.view, self.paths]


class ResultsPanel:
    """The status box, ``MAX_OUTPUTS`` result groups and the file list, with ``prefix``-ed
    elem_ids (``{prefix}-progress``, ``{prefix}-audio-{i}``, ...). ``targets`` are the send-to
    choices (none: no send-to row)."""

    def __init__(self, text: dict, prefix: str, targets: tuple[str, ...] = ()):
        self.text = text
        self.status = gr.Textbox(label=text["progress"], interactive=False, elem_id=f"{prefix}-progress")
        self.slots = [self._slot(text, prefix, i, targets) for i in range(MAX_OUTPUTS)]
        self.files = gr.File(
            label=text["results"], file_count="multiple", interactive=False, elem_id=f"{prefix}-files"
        )

    @staticmethod
    def _slot(text: dict, prefix: str, i: int, targets: tuple[str, ...]) -> Slot:
        with gr.Group(visible=False, elem_id=f"{prefix}-result-{i}") as group:
            meta = gr.Markdown(elem_id=f"{prefix}-meta-{i}")
            with gr.Row():
                player = gr.Audio(
                    label=f"{text['results']} {i + 1}",
                    type="filepath",
                    interactive=False,
                    elem_id=f"{prefix}-audio-{i}",
                )
                picture = gr.Image(
                    label=text["spectrogram"],
                    type="numpy",
                    interactive=False,
                    elem_id=f"{prefix}-spectrogram-{i}",
                )
            view = gr.Radio(
                [(text[f"view_{name}"], name) for name in VIEWS],
                value="stem",
                label=text["view"],
                visible=False,
                elem_id=f"{prefix}-ab-{i}",
            )
            target = send = None
            if targets:
                with gr.Row(equal_height=True):
                    choices = [(name, name) for name in targets] + [(text["send_reference"], REFERENCE)]
                    target = gr.Dropdown(
                        choices,
                        value=targets[0],
                        label=text["send_to"],
                        scale=3,
                        elem_id=f"{prefix}-send-target-{i}",
                    )
                    with gr.Column(scale=1, min_width=120):
                        send = gr.Button(text["send"], size="md", elem_id=f"{prefix}-send-{i}")
        paths = gr.State({})

        def play(view: str, held: dict):
            return held.get(view) or gr.update()

        view.input(play, [view, paths], player)
        return Slot(group, meta, player, picture, view, paths, target, send)

    @property
    def outputs(self) -> list:
        """What a job's updates fill, in the order ``cleared``, ``progress`` and ``filled`` give."""
        return [self.status, *(c for slot in self.slots for c in slot.outputs), self.files]

    def cleared(self, line: str) -> list:
        """A new job: the status line, every group hidden and emptied."""
        empty = [gr.update(visible=False), "", None, None, gr.update(value="stem", visible=False), {}]
        return [line, *(empty * MAX_OUTPUTS), None]

    def progress(self, line: str) -> list:
        return [line, *([gr.update()] * (len(self.outputs) - 1))]

    def filled(self, summary: str, result: GenerationResult, source: str | None) -> list:
        """The ended job's updates: blocking (spectrograms, mixes), so run off the event loop."""
        updates: list = [summary]
        for i in range(MAX_OUTPUTS):
            if i < len(result.items):
                updates += self._item(i, result, source)
            else:
                updates += [gr.update(visible=False), "", None, None, gr.update(visible=False), {}]
        return [*updates, result.audio_paths]

    def _item(self, i: int, result: GenerationResult, source: str | None) -> list:
        item = result.items[i]
        paths = {"stem": item.path}
        stems = result.task_type in STEM_TASKS and source is not None
        if stems:
            mixed = mixdown.write_mix(item.path, source)
            paths |= {"source": source} | ({"mix": str(mixed)} if mixed else {})
        seeded = f"{self.text['results']} {i + 1} · {self.text['result_seed']} {item.seed}"
        return [
            gr.update(visible=True),
            f"**{seeded}** · {self.metas_line(result, item.duration)}",
            gr.update(value=item.path, label=seeded),
            spectrogram.image(item.path),
            gr.update(value="stem", visible=stems),
            paths,
        ]

    def metas_line(self, result: GenerationResult, duration: float) -> str:
        metas, text = result.metas, self.text
        signature = metas.get("time_signature")
        parts = [
            result.task_type,
            f"{duration:.1f} s",
            f"{text['bpm']} {metas['bpm']}" if metas.get("bpm") else None,
            metas.get("key_scale") or None,
            TIME_SIGNATURE_NAMES.get(signature, signature) or None,
            f"{metas['steps']} {text['result_steps']}" if metas.get("steps") else None,
        ]
        return " · ".join(part for part in parts if part)

    def connect(self, task: gr.components.Component, source: gr.Audio, reference: gr.Audio) -> None:
        """Each slot's send button: a source task becomes the studio's task with this result (what
        the A/B switch plays) as its source; ``reference`` fills the reference audio instead."""
        text = self.text

        def send(target: str, view: str, held: dict):
            path = held.get(view or "stem") or held.get("stem")
            if not path or not Path(path).is_file():  # swept by the results' retention meanwhile
                raise gr.Error(text["send_nothing"])
            if target == REFERENCE:
                return gr.update(), gr.update(), path
            return target, path, gr.update()

        for slot in self.slots:
            if slot.send is not None:
                slot.send.click(send, [slot.target, slot.view, slot.paths], [task, source, reference])
