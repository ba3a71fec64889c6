"""``acestep generate -o FILE``: the format a file name implies, and the files moved to their names.

The first item goes to FILE; with ``--batch-size N`` item k (k = 2..N) goes to ``STEM-k.EXT`` next to
it (``song.wav``, ``song-2.wav``, ``song-3.wav``). An existing file of that name is replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_FORMAT = "wav"


def _extensions() -> dict[str, str]:
    """File extension -> the first request format that writes it (``.wav`` -> wav, not wav32)."""
    from acestep.engine.audio_io import FORMATS

    by_extension: dict[str, str] = {}
    for name, (_container, _subtype, extension) in FORMATS.items():
        by_extension.setdefault(extension, name)
    return by_extension


def resolve_format(output: str | None, audio_format: str | None) -> str:
    """The format to write: ``--format``, else the ``-o`` file's extension, else wav. A ValueError
    says why when the two disagree or the extension names no format we write."""
    if output is None:
        return audio_format or DEFAULT_FORMAT
    from acestep.engine.audio_io import FORMATS

    extension = Path(output).suffix.lower().lstrip(".")
    known = _extensions()
    if audio_format is None:
        if extension not in known:
            raise ValueError(
                f"-o {output}: cannot tell the audio format from the file name; end it in "
                f"{', '.join('.' + e for e in known)}, or add --format"
            )
        return known[extension]
    expected = FORMATS[audio_format][2]
    if extension != expected:
        named = f".{extension}" if extension else "a name without extension"
        raise ValueError(f"-o {output}: --format {audio_format} writes .{expected} files, not {named}")
    return audio_format


def batch_paths(output: str | Path, count: int) -> list[Path]:
    """Where each of ``count`` items goes: FILE, then STEM-2.EXT ... STEM-N.EXT beside it."""
    first = Path(output)
    return [first] + [first.with_name(f"{first.stem}-{k}{first.suffix}") for k in range(2, count + 1)]


def move_to_output(result, output: str | Path) -> None:
    """Rename the files the engine wrote (in FILE's folder) to their ``-o`` names, in the result too."""
    for item, target in zip(result.items, batch_paths(output, len(result.items)), strict=True):
        os.replace(item.path, target)
        item.path = str(target)
