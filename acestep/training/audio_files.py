"""The audio files of a dataset: found under its folder (bounded, links kept inside), their
headers read in bounded child processes (:mod:`acestep.engine.audio_probe`, the bounds a
generation's inputs have), and the samples built from them with unique names."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from acestep.tasks import MAX_DURATION_S, MAX_PATH_CHARS
from acestep.training.sample import AUDIO_SUFFIXES, DatasetError, Sample, settle_instrumental
from acestep.training.sidecars import inside

MAX_DATASET_FILES = 5000  # audio files in one dataset; LoRA datasets hold tens
# Entries a folder scan looks at before it gives up: a song brings up to four sidecars.
MAX_FOLDER_ENTRIES = 8 * MAX_DATASET_FILES
PROBES_AT_ONCE = 4  # audio_probe runs at most four header children at once


def _unique(stem: str, taken: set[str]) -> str:
    name, n = stem, 2
    while name in taken:
        name, n = f"{stem}-{n}", n + 1
    taken.add(name)
    return name


def find_audio(base: Path) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """The audio files under ``base`` (relative name, path), sorted, hidden entries passed over;
    links that leave the folder are problems. DatasetError past the bounds."""
    found: list[tuple[str, Path]] = []
    problems: dict[str, str] = {}
    seen = 0
    for dirpath, dirnames, filenames in os.walk(base):  # links to folders are not followed
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        seen += len(dirnames) + len(filenames)
        if seen > MAX_FOLDER_ENTRIES:
            raise DatasetError(
                f"{base} holds more than {MAX_FOLDER_ENTRIES} files; point at the dataset's own folder"
            )
        for file_name in filenames:
            path = Path(dirpath, file_name)
            if file_name.startswith(".") or path.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            rel = path.relative_to(base).as_posix()
            if not inside(path, base):
                problems[rel] = "a link to a file outside the dataset folder"
            elif not path.is_file():
                problems[rel] = "not a regular file"
            else:
                found.append((rel, path))
    if len(found) > MAX_DATASET_FILES:
        raise DatasetError(
            f"{base} holds {len(found)} audio files; a dataset may have at most {MAX_DATASET_FILES}"
        )
    return sorted(found), problems


def _durations(files: list[tuple[str, Path]]) -> dict[str, float | str]:
    """Each file's length in seconds, or the reason its header is refused."""
    from acestep.engine.audio_limits import AudioInputError, check_header
    from acestep.engine.audio_probe import probe

    def one(item: tuple[str, Path]) -> float | str:
        key, path = item
        try:
            if len(str(path)) > MAX_PATH_CHARS:
                return f"the path is over {MAX_PATH_CHARS} characters"
            if path.stat().st_size == 0:
                return "the file is empty"
            return check_header(key, probe(path, key), max_seconds=MAX_DURATION_S)
        except AudioInputError as exc:
            return str(exc).removeprefix(f"{key}: ")
        except OSError as exc:
            return f"cannot be read ({exc.strerror or type(exc).__name__})"

    with ThreadPoolExecutor(PROBES_AT_ONCE) as pool:
        return dict(zip((key for key, _ in files), pool.map(one, files), strict=True))


def build_samples(
    found: list[tuple[str, Path, str, dict[str, Any]]], problems: dict[str, str]
) -> list[Sample]:
    """The samples, their headers read; the files whose header is refused go to ``problems``."""
    lengths = _durations([(key, path) for key, path, _, _ in found])
    samples: list[Sample] = []
    taken: set[str] = set()
    for key, path, wanted, values in found:
        length = lengths[key]
        if isinstance(length, str):
            problems[key] = length
            continue
        values = settle_instrumental(dict(values))
        samples.append(Sample(name=_unique(wanted, taken), audio_path=str(path), duration=length, **values))
    return samples
