"""The Training tab (``ACESTEP_TRAINING=on``): a Dataset page and a Train page over the training
API, and the hand-over of a finished adapter to the Generate and Lego tabs' LoRA pickers.

Everything runs through the app's ``JobService`` and the torch-free training modules: the UI
process never touches the GPU.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import gradio as gr

from acestep.settings import training_dir
from acestep.ui import lora as lora_ui
from acestep.ui import training_dataset, training_run


def tab(state, text: dict, pickers: list[gr.Dropdown]) -> None:
    """The tab; ``pickers`` are the LoRA dropdowns "Use this adapter" selects the adapter in."""
    root = training_dir()
    with gr.Tab(text["tab_training"], elem_id="tab-training") as training_tab:
        gr.Markdown(f"**{text['train_folder']}:** `{root}`", elem_id="train-folder")
        with gr.Tab(text["train_page_dataset"], elem_id="train-page-dataset"):
            data = training_dataset.page(state, text)
        with gr.Tab(text["train_page_train"], elem_id="train-page-train"):
            run = training_run.page(state, text, training_dataset.dataset_names(root))

    def chosen(source: str | None):
        """The dataset just created or opened becomes the one to train on."""
        if not source:
            return gr.skip(), gr.skip()
        names = training_dataset.dataset_names(root)
        path = Path(source)
        folder = path if path.is_dir() else path.parent
        value = folder.relative_to(root.resolve()).as_posix()
        return gr.update(choices=names, value=value), gr.update(choices=names, value=value)

    for event in data.chosen:
        event.success(chosen, data.source, [run.dataset, data.choices])

    async def opened(current):
        names = await anyio.to_thread.run_sync(training_dataset.dataset_names, root)
        return gr.update(choices=names), gr.update(choices=names), *(await run.follow(current))

    training_tab.select(opened, run.job_id, [run.dataset, data.choices, *run.outputs])

    async def use(adapter: str | None):
        if not adapter:
            raise gr.Error(text["train_no_adapter"])
        names = await anyio.to_thread.run_sync(lora_ui.names, state)  # the adapter is new: list again
        if adapter not in names:
            raise gr.Error(f"adapter {adapter!r} is not among this model's adapters in the LoRA folder")
        updates = [gr.update(choices=names, value=[adapter]) for _ in pickers]  # Gradio consumes each
        return *updates, f"{text['train_using']}: `{adapter}`"

    run.use.click(use, run.adapter, [*pickers, run.note])


__all__ = ["tab"]
