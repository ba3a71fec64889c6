"""The Training tab's Dataset page: upload audio (and sidecars) into a new dataset folder, or open
one under the training folder; edit its samples in a table; save the dataset JSON and sidecars;
queue its preprocessing.

Files are read and written with :mod:`acestep.training.dataset` (torch-free: audio headers are read
in bounded child processes), off the event loop. Preprocessing is a ``preprocess_only`` run queued
through the app's ``JobService``, followed by a timer like a training run.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio
import gradio as gr

from acestep.jobs.uploads import HEAD_BYTES, UploadError, confine, sniff_audio
from acestep.settings import training_dir
from acestep.training.dataset import (
    AUDIO_SUFFIXES,
    MAX_DATASET_FILES,
    Dataset,
    DatasetError,
    edit,
    load,
    open_dataset,
    save,
    write_sidecars,
)
from acestep.training.places import CACHE_FOLDER, DATASET_FILE, RUNS_FOLDER, PlaceError, dataset_path
from acestep.training.request import NAME_RE
from acestep.training.sample import Sample, apply_changes
from acestep.training.sidecars import CAPTION_SUFFIX, LYRICS_SUFFIXES, MAX_SIDECAR_BYTES, METADATA_SUFFIX
from acestep.ui import training_run

SIDECAR_SUFFIXES = (*LYRICS_SUFFIXES, CAPTION_SUFFIX, METADATA_SUFFIX)
OWN_FOLDERS = (RUNS_FOLDER, CACHE_FOLDER)  # the training folder's own folders: never datasets
UNSAFE_CHARACTERS = re.compile(r"[^\w .()+,-]")  # what an uploaded file's name may keep
MAX_FILE_NAME = 200
# The table's columns: (string key, sample field, Gradio datatype); the name and length are shown only.
COLUMNS = (
    ("train_col_name", "name", "str"),
    ("caption", "caption", "str"),
    ("lyrics", "lyrics", "str"),
    ("bpm", "bpm", "number"),
    ("train_col_key", "keyscale", "str"),
    ("train_col_time_signature", "timesignature", "str"),
    ("train_col_language", "language", "str"),
    ("train_col_instrumental", "is_instrumental", "bool"),
    ("train_col_duration", "duration", "number"),
)
STATIC_COLUMNS = [0, len(COLUMNS) - 1]
EDITED = tuple(field for _, field, _ in COLUMNS[1:-1])


@dataclass
class DatasetPage:
    source: gr.State  # the open dataset (its folder or dataset file, absolute), or None
    chosen: list  # the events after which ``source`` names a newly opened dataset
    choices: gr.Dropdown  # the training folder's datasets


def dataset_names(root: Path) -> list[str]:
    """The training folder's sub-folders that may hold datasets (not its runs and caches)."""
    if not root.is_dir():
        return []
    return sorted(
        path.name
        for path in root.iterdir()
        if path.is_dir() and not path.name.startswith(".") and path.name not in OWN_FOLDERS
    )


def new_folder(root: Path, name: str | None) -> Path:
    """The folder a new dataset named ``name`` goes into: a plain name, directly in ``root``."""
    name = (name or "").strip()
    if not NAME_RE.fullmatch(name):
        raise gr.Error(
            f"a dataset name is a plain name (letters, digits, '.', '_', '-'; at most 64), got {name!r}"
        )
    if name in OWN_FOLDERS:
        raise gr.Error(f"{name!r} is a folder the training folder keeps for itself; choose another name")
    folder = root / name
    if folder.exists() and not folder.is_dir():
        raise gr.Error(f"{name!r} is a file in the training folder; choose another name")
    return folder


def plain_file_name(name: str) -> str:
    """An uploaded file's name as it is kept in the dataset (its stem pairs audio with sidecars)."""
    kept = UNSAFE_CHARACTERS.sub("_", Path(name).name).strip()
    if not kept or kept.startswith(".") or len(kept) > MAX_FILE_NAME:
        raise ValueError(f"not a usable file name (at most {MAX_FILE_NAME} characters, not hidden)")
    if kept.lower() == DATASET_FILE:
        raise ValueError(f"{DATASET_FILE} is the file Save writes; upload audio and its sidecars")
    return kept


def _checked_upload(source: Path, name: str, limit: int) -> None:
    """ValueError when the file is not audio (by its first bytes) or a sidecar, or too large."""
    size = source.stat().st_size
    lower = name.lower()
    if lower.endswith(SIDECAR_SUFFIXES):
        if size > MAX_SIDECAR_BYTES:
            raise ValueError(f"{size} bytes; a sidecar may have at most {MAX_SIDECAR_BYTES}")
        return
    if not lower.endswith(AUDIO_SUFFIXES):
        kinds = ", ".join(AUDIO_SUFFIXES + SIDECAR_SUFFIXES)
        raise ValueError(f"neither audio nor a sidecar (the names end in {kinds})")
    if size > limit:
        raise ValueError(f"over the {limit // 2**20} MB upload limit")
    with source.open("rb") as handle:
        if sniff_audio(handle.read(HEAD_BYTES)) is None:
            raise ValueError("not WAV, FLAC, MP3 or OGG audio")


def copy_uploads(paths: list[str], folder: Path, limit: int) -> tuple[int, dict[str, str]]:
    """Copy Gradio's uploads into ``folder``: how many were copied, and why the others were not.
    Only regular files in Gradio's upload folder are read (as the other tabs' uploads)."""
    from gradio.utils import get_upload_folder

    if len(paths) > MAX_DATASET_FILES:
        raise gr.Error(f"{len(paths)} files; a dataset may have at most {MAX_DATASET_FILES}")
    uploads = Path(get_upload_folder())
    copied, problems = 0, {}
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shown = Path(path).name
        try:
            source = confine(path, [uploads], "upload")
            if not source.is_file():
                raise ValueError("not a file uploaded here")
            name = plain_file_name(shown)
            _checked_upload(source, name, limit)
            target = folder / name
            if target.exists():
                raise ValueError("the dataset already has a file of this name")
            try:
                shutil.copyfile(source, target)
            except BaseException:  # a full disk leaves no partial file
                target.unlink(missing_ok=True)
                raise
            copied += 1
        except UploadError:
            problems[shown] = "not a file uploaded here"
        except (OSError, ValueError) as exc:
            problems[shown] = getattr(exc, "strerror", None) or str(exc)
    return copied, problems


def rows(dataset: Dataset) -> list[list]:
    """The table: one row per sample, in ``COLUMNS`` order (the length rounded for reading)."""
    shown = []
    for sample in dataset.samples:
        values = sample.as_dict()
        values["duration"] = round(sample.duration or 0.0, 2)
        shown.append([values[field] for _, field, _ in COLUMNS])
    return shown


def _cell(field: str, value):
    """A table cell as the sample field reads it (an empty number is none; a bool may be text)."""
    if field == "bpm":
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return None if isinstance(value, float) and math.isnan(value) else value
    if field == "is_instrumental":
        return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def apply_rows(dataset: Dataset, table: list[list]) -> int:
    """Apply the table's changes to ``dataset``: how many samples changed. Every row is checked
    first; gr.Error names each refused row and its reason, and then nothing is changed."""
    changes, refused = {}, []
    for row in table:
        name = str(row[0] or "").strip()
        if not name:
            continue  # a row the table's editor added
        try:
            sample = dataset.sample(name)
            values = {field: _cell(field, row[i + 1]) for i, field in enumerate(EDITED)}
            diff = {field: value for field, value in values.items() if value != getattr(sample, field)}
            if diff:
                apply_changes(Sample(**sample.as_dict()), diff)  # a trial on a copy
                changes[name] = diff
        except DatasetError as exc:
            refused.append(f"{name}: {exc}")
    if refused:
        raise gr.Error("nothing was saved: " + "; ".join(refused))
    for name, diff in changes.items():
        edit(dataset, name, **diff)
    return len(changes)


def locate(value: str, root: Path) -> Path:
    """A dataset under the training folder: a folder's saved dataset file when it has one."""
    try:
        return dataset_path(value, root, confined=True)
    except PlaceError as exc:
        raise gr.Error(str(exc)) from None


def read(source: Path, root: Path) -> Dataset:
    """The dataset at ``source`` (inside ``root``, else gr.Error): a dataset file is loaded; a
    folder is scanned, keeping the dataset-wide settings (custom tag ...) of the file a Save wrote
    into it before."""
    try:
        dataset = open_dataset(source, root)
    except DatasetError as exc:
        raise gr.Error(str(exc)) from None
    saved = source / DATASET_FILE
    if source.is_dir() and saved.is_file():
        try:
            before = load(saved, root)
        except DatasetError:
            return dataset  # the file Save writes next replaces it
        dataset.custom_tag, dataset.tag_position = before.custom_tag, before.tag_position
        dataset.genre_ratio = before.genre_ratio
    return dataset


def problems_text(problems: dict[str, str], text: dict) -> str:
    if not problems:
        return ""
    lines = "\n".join(f"- `{name}`: {why}" for name, why in problems.items())
    return f"**{text['train_problems']}:**\n{lines}"


def summary(dataset: Dataset, folder: Path, text: dict) -> str:
    minutes = dataset.total_duration / 60
    return (
        f"**{dataset.name}** (`{folder}`) · {len(dataset.samples)} {text['train_samples']} · "
        f"{minutes:.1f} min · {dataset.labelled} {text['train_labelled']}"
    )


def page(state, text: dict) -> DatasetPage:
    root = training_dir()
    with gr.Row():
        name = gr.Textbox(label=text["train_new_name"], elem_id="train-new-name")
        files = gr.File(
            file_count="multiple",
            file_types=list(AUDIO_SUFFIXES + SIDECAR_SUFFIXES),
            label=text["train_upload"],
            elem_id="train-upload",
        )
    create = gr.Button(text["train_create"], variant="primary", elem_id="train-create")
    with gr.Row():
        existing = gr.Dropdown(
            dataset_names(root),
            value=None,
            allow_custom_value=True,
            label=text["train_existing"],
            elem_id="train-existing",
        )
        opener = gr.Button(text["train_open"], elem_id="train-open")
    source = gr.State(None)  # the open dataset: its folder (scanned) or its dataset file
    heading = gr.Markdown(elem_id="train-dataset-summary")
    table = gr.Dataframe(
        headers=[text[key] for key, _, _ in COLUMNS],
        datatype=[kind for _, _, kind in COLUMNS],
        type="array",
        interactive=True,
        static_columns=STATIC_COLUMNS,
        wrap=True,
        label=text["train_table"],
        elem_id="train-table",
    )
    problems = gr.Markdown(elem_id="train-problems")
    with gr.Row():
        saver = gr.Button(text["train_save"], elem_id="train-save")
        preprocess = gr.Button(text["train_preprocess"], variant="primary", elem_id="train-preprocess")
    status = gr.Textbox(label=text["progress"], interactive=False, elem_id="train-dataset-status")
    job_id = gr.State(None)
    timer = gr.Timer(training_run.TICK_S, active=False)

    def shown(dataset: Dataset, path: Path, refused: dict[str, str]) -> tuple:
        folder = path if path.is_dir() else path.parent
        return (
            str(path),
            summary(dataset, folder, text),
            rows(dataset),
            problems_text(refused | dataset.problems, text),
        )

    def add(name_text: str | None, paths: list[str] | None) -> tuple:
        target = new_folder(root, name_text)
        if not paths:
            raise gr.Error(text["train_need_files"])
        existed = target.is_dir()
        copied, refused = copy_uploads(list(paths), target, state.config.max_upload_bytes)
        if not copied:
            if not existed:
                shutil.rmtree(target, ignore_errors=True)  # no empty dataset folder stays behind
            raise gr.Error("no file was usable: " + "; ".join(f"{k}: {v}" for k, v in refused.items()))
        target = target.resolve()
        return *shown(read(target, root), target, refused), None

    def reopen(choice: str | None) -> tuple:
        if not choice:
            raise gr.Error(text["train_no_dataset"])
        path = locate(str(choice), root)
        return shown(read(path, root), path, {})

    def store(value: str | None, table_rows: list[list] | None) -> tuple[Path, str, str]:
        """Apply the table, then write ``<folder>/dataset.json`` and each sample's sidecars."""
        if not value:
            raise gr.Error(text["train_no_dataset"])
        path = Path(value)  # a folder is scanned again: files added since are in the table too
        folder = path if path.is_dir() else path.parent
        dataset = read(path, root)  # refuses what lies outside the training folder
        changed = apply_rows(dataset, table_rows or [])
        try:
            written = save(dataset, folder / DATASET_FILE)
            write_sidecars(dataset)
        except DatasetError as exc:
            raise gr.Error(str(exc)) from None
        line = f"{text['train_saved']}: {written} ({changed} {text['train_changed']})"
        return folder, line, summary(dataset, folder, text)

    async def save_table(value, table_rows):
        _, line, heading = await anyio.to_thread.run_sync(store, value, table_rows)
        return line, heading

    async def start_preprocess(value, table_rows):
        # What is preprocessed is what the table shows: it is saved first.
        folder, _, shown_heading = await anyio.to_thread.run_sync(store, value, table_rows)
        dataset = folder.relative_to(root.resolve()).as_posix()
        request = training_run.request_of({"dataset": dataset, "preprocess_only": True})
        job, _ = await training_run.submit(state, request)
        return job.id, text["queued"], shown_heading, gr.Timer(active=True)

    async def tick(current):
        line, ended = await training_run.status_of(state, current, text)
        return line, gr.Timer(active=not ended)

    async def upload(name_text, paths):
        return await anyio.to_thread.run_sync(add, name_text, paths)

    async def open_existing(choice):
        return await anyio.to_thread.run_sync(reopen, choice)

    outputs = [source, heading, table, problems]
    chosen = [
        create.click(upload, [name, files], [*outputs, files], concurrency_limit=None),
        opener.click(open_existing, existing, outputs, concurrency_limit=None),
    ]
    saver.click(save_table, [source, table], [status, heading], concurrency_limit=None)
    preprocess.click(
        start_preprocess, [source, table], [job_id, status, heading, timer], concurrency_limit=None
    )
    timer.tick(tick, job_id, [status, timer])

    return DatasetPage(source=source, chosen=chosen, choices=existing)


__all__ = ["DatasetPage", "apply_rows", "copy_uploads", "dataset_names", "page", "rows"]
