"""``acestep dataset scan|show|edit|save``: build, check and edit a training dataset (a folder of
audio files with upstream's sidecars, or upstream's dataset JSON file) from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from acestep.training.dataset import Dataset

CAPTION_SHOWN = 48  # characters of a caption in the sample table
# The edit flags and the sample field each one sets (--lyrics-file reads its file into lyrics).
EDIT_FLAGS = {
    "caption": "caption",
    "lyrics": "lyrics",
    "bpm": "bpm",
    "keyscale": "keyscale",
    "timesignature": "timesignature",
    "language": "language",
    "instrumental": "is_instrumental",
}


def _dataset_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dataset",
        help="build, check and edit a training dataset",
        description="A dataset is a folder of audio files (wav, flac, mp3, ogg, opus) with upstream "
        "ACE-Step's sidecars (<name>.lyrics.txt or <name>.txt, <name>.json, <name>.caption.txt, a "
        "Key-BPM-Finder CSV), or the dataset JSON file `acestep dataset save` writes.",
    )
    steps = p.add_subparsers(dest="dataset_command", title="commands", required=True)
    scan = steps.add_parser("scan", help="scan a folder: the samples found and the files left out")
    scan.add_argument("folder", metavar="FOLDER")
    scan.add_argument("-o", "--output", metavar="FILE", help="also write the dataset JSON to FILE")
    scan.add_argument("--name", help="the dataset's name (default: the folder's)")
    show = steps.add_parser("show", help="print a dataset's samples")
    show.add_argument("path", metavar="FILE_OR_FOLDER")
    show.add_argument("--json", action="store_true", help="print the dataset JSON (and the problems)")
    edit = steps.add_parser(
        "edit",
        help="change one sample and write it back",
        description="Change one sample. A dataset JSON file is written back in place; for a folder, "
        "the sample's sidecars (<name>.json, <name>.lyrics.txt) are written next to its audio.",
    )
    edit.add_argument("path", metavar="FILE")
    edit.add_argument("sample", metavar="SAMPLE", help="the sample's name (see `acestep dataset show`)")
    edit.add_argument("--caption", help="the new caption (what the music sounds like)")
    lyrics = edit.add_mutually_exclusive_group()
    lyrics.add_argument("--lyrics", help="the new lyrics ([Instrumental] for none)")
    lyrics.add_argument("--lyrics-file", metavar="F", help="read the lyrics from a UTF-8 text file")
    edit.add_argument("--bpm", type=int, help="beats per minute, 30-300")
    edit.add_argument("--keyscale", help='e.g. "C major"')
    edit.add_argument("--timesignature", help='beats per bar, e.g. "4"')
    edit.add_argument("--language", help='the vocal language, e.g. "en" (default "unknown")')
    edit.add_argument(
        "--instrumental",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mark the track instrumental (its lyrics become [Instrumental]) or sung",
    )
    save = steps.add_parser("save", help="check a dataset and write its JSON file")
    save.add_argument("path", metavar="FILE_OR_FOLDER")
    save.add_argument("-o", "--output", metavar="OUT", required=True, help="the dataset JSON file to write")
    save.add_argument("--sidecars", action="store_true", help="also write each sample's sidecar files")


def run_dataset(args: argparse.Namespace) -> int:
    from acestep.training.dataset import DatasetError

    command = {"scan": _scan, "show": _show, "edit": _edit, "save": _save}[args.dataset_command]
    try:
        return command(args)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _summary(dataset: Dataset) -> str:
    where = f" ({dataset.folder})" if dataset.folder else ""
    return (
        f"dataset {dataset.name}{where}: {len(dataset.samples)} samples, "
        f"{_seconds(dataset.total_duration)} in all, {dataset.labelled} with a caption, "
        f"{len(dataset.problems)} left out"
    )


def _print_report(dataset: Dataset) -> None:
    """The summary line, a row per sample (the caption last, clipped) and the files left out."""
    print(_summary(dataset))
    rows = [(s.name, _seconds(s.duration), str(s.bpm or "-"), s.keyscale or "-") for s in dataset.samples]
    captions = [_clip(s.caption, CAPTION_SHOWN) or "-" for s in dataset.samples]
    if rows:
        rows.insert(0, ("name", "duration", "bpm", "key"))
        captions.insert(0, "caption")
    widths = [max(len(row[i]) for row in rows) for i in range(4)] if rows else []
    for row, caption in zip(rows, captions, strict=True):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + "  " + caption)
    _print_problems(dataset, sys.stdout)


def _print_problems(dataset: Dataset, stream: TextIO) -> None:
    for file, why in dataset.problems.items():
        print(f"left out: {file}: {why}", file=stream)


def _scan(args: argparse.Namespace) -> int:
    from acestep.training.dataset import require_usable, save, scan

    dataset = scan(args.folder, name=args.name)
    _print_report(dataset)
    require_usable(dataset)
    if args.output:
        print(f"wrote {save(dataset, args.output)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from acestep.training.dataset import open_dataset

    dataset = open_dataset(args.path)
    if args.json:
        print(json.dumps(dataset.to_json() | {"problems": dataset.problems}, indent=2, ensure_ascii=False))
        return 0
    _print_report(dataset)
    return 0


def _changes(args: argparse.Namespace) -> dict:
    from acestep.training.dataset import DatasetError
    from acestep.training.sidecars import read_text

    changes = {
        field: getattr(args, flag) for flag, field in EDIT_FLAGS.items() if getattr(args, flag) is not None
    }
    if args.lyrics_file:
        path = Path(args.lyrics_file).resolve()
        text = read_text(path, path.parent) if path.is_file() else None
        if text is None:
            raise DatasetError(f"{args.lyrics_file} is not a file")
        changes["lyrics"] = text
    if not changes:
        raise DatasetError("nothing to change: give --caption, --lyrics, --bpm, --keyscale, ... (see --help)")
    return changes


def _edit(args: argparse.Namespace) -> int:
    from acestep.training.dataset import (
        SHOWN_PROBLEMS,
        DatasetError,
        edit,
        open_dataset,
        save,
        write_sidecars,
    )

    changes = _changes(args)
    dataset = open_dataset(args.path)
    in_folder = Path(args.path).is_dir()
    if dataset.problems and not in_folder:
        # Writing the file back would drop the entries that did not load; say so instead.
        left_out = ", ".join(list(dataset.problems)[:SHOWN_PROBLEMS])
        raise DatasetError(
            f"{args.path} has {len(dataset.problems)} sample(s) that cannot be used ({left_out}); fix them, "
            "or write the usable ones with `acestep dataset save`, then edit"
        )
    sample = edit(dataset, args.sample, **changes)
    written = write_sidecars(dataset, [sample.name]) if in_folder else [save(dataset, args.path)]
    print(
        f"{sample.name}: "
        + ", ".join(f"{field} = {_clip(str(getattr(sample, field)), CAPTION_SHOWN)}" for field in changes)
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def _save(args: argparse.Namespace) -> int:
    from acestep.training.dataset import open_dataset, require_usable, save, write_sidecars

    dataset = open_dataset(args.path)
    _print_problems(dataset, sys.stderr)
    require_usable(dataset)
    written = [save(dataset, args.output)]
    if args.sidecars:
        written += write_sidecars(dataset)
    print(_summary(dataset))
    for path in written:
        print(f"wrote {path}")
    return 0
