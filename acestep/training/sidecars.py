"""The files next to each audio file that upstream ACE-Step's dataset builder reads, and the
Key-BPM-Finder table: read (bounded, UTF-8, inside the dataset folder) and written back.

For ``song.mp3``: lyrics in ``song.lyrics.txt``, else ``song.txt`` (upstream's older name); a
caption in ``song.caption.txt``; metadata in ``song.json`` (caption, bpm, keyscale, timesignature,
language, and upstream's other sample keys). A ``*.csv`` at the top of the folder with a ``File``
column gives ``BPM``, ``Key`` and ``Caption`` per file name (upstream's csv_metadata.py).

Precedence, lowest first: the CSV table, ``.caption.txt``, ``.json``. Upstream applies the table
last; here a file's own sidecar wins, so an edit written back with :func:`write_sample` persists
over a folder-wide table.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from acestep.training.sample import DatasetError, Sample, checked, entry_values

LYRICS_SUFFIXES = (".lyrics.txt", ".txt")  # the first that exists wins
CAPTION_SUFFIX = ".caption.txt"
METADATA_SUFFIX = ".json"
# Lyrics at MAX_LYRICS_CHARS of up to 4 UTF-8 bytes are 80 KB; a larger sidecar is not one.
MAX_SIDECAR_BYTES = 256 * 1024
MAX_CSV_BYTES = 8 * 2**20  # a table row per file, for thousands of files
CSV_DELIMITERS = ",;\t"
# Upstream's table columns (matched case-insensitively) and the sample field each one sets.
CSV_FILE_COLUMN = "file"
CSV_COLUMNS = {"bpm": "bpm", "key": "keyscale", "caption": "caption"}


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links followed, lies in ``root`` (already resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop
        return False


def read_text(path: Path, root: Path, limit: int = MAX_SIDECAR_BYTES) -> str | None:
    """A sidecar's text, stripped; None when there is no such file, "" when it is empty (upstream
    then looks at the next name). DatasetError naming the file when it cannot be used."""
    if not path.is_file():
        return None
    if not inside(path, root):
        raise DatasetError(f"{path.name}: a link to a file outside the dataset folder")
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)  # never more than the bound, however large the file
    except OSError as exc:
        raise DatasetError(f"{path.name}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limit:
        raise DatasetError(f"{path.name}: over {limit} bytes; a sidecar may have at most that")
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name}: not UTF-8 text (byte {exc.start})") from None


def _sidecar(audio: Path, suffix: str) -> Path:
    return audio.with_name(audio.stem + suffix)


def _prefixed(name: str, exc: DatasetError) -> DatasetError:
    return DatasetError(f"{name}: {exc}")


def _text_field(file: Path, field: str, root: Path) -> str | None:
    """A text sidecar's checked value for ``field``; None when it is missing or empty."""
    text = read_text(file, root)
    if not text:
        return None
    try:
        return checked(field, text)
    except DatasetError as exc:
        raise _prefixed(file.name, exc) from None


def sidecar_values(audio: Path, root: Path) -> dict[str, Any]:
    """The checked sample fields the sidecars of ``audio`` give; DatasetError naming the sidecar
    and the reason when one of them cannot be used."""
    values: dict[str, Any] = {}
    caption = _text_field(_sidecar(audio, CAPTION_SUFFIX), "caption", root)
    if caption is not None:
        values["caption"] = caption
    for suffix in LYRICS_SUFFIXES:
        lyrics = _text_field(_sidecar(audio, suffix), "lyrics", root)
        if lyrics is not None:
            values["lyrics"] = lyrics
            break
    meta_file = _sidecar(audio, METADATA_SUFFIX)
    text = read_text(meta_file, root)
    if text is not None:
        try:
            meta = json.loads(text or "{}")
        except ValueError as exc:
            raise DatasetError(f"{meta_file.name}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise DatasetError(f"{meta_file.name}: must be a JSON object of sample fields")
        try:
            values |= entry_values(meta)
        except DatasetError as exc:
            raise _prefixed(meta_file.name, exc) from None
    return values


def read_tables(root: Path) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The Key-BPM-Finder style tables at the top of ``root``: file name -> raw column values, and
    the tables that could not be read (file name -> reason). A CSV without a File column is not
    such a table and is passed over, as upstream does; later tables (by name) win."""
    rows: dict[str, dict[str, str]] = {}
    problems: dict[str, str] = {}
    tables = sorted(p for p in root.iterdir() if p.suffix.lower() == ".csv" and not p.name.startswith("."))
    for table in tables:
        try:
            text = read_text(table, root, MAX_CSV_BYTES)
            rows |= _table_rows(text or "")
        except DatasetError as exc:
            problems[table.name] = str(exc).removeprefix(f"{table.name}: ")
        except csv.Error as exc:
            problems[table.name] = f"not a readable CSV table ({exc})"
    return rows, problems


def _table_rows(text: str) -> dict[str, dict[str, str]]:
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=CSV_DELIMITERS)
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    headers = {h.strip().lower(): h for h in reader.fieldnames or [] if h}
    if CSV_FILE_COLUMN not in headers:
        return {}
    rows: dict[str, dict[str, str]] = {}
    for row in reader:
        file_name = Path((row.get(headers[CSV_FILE_COLUMN]) or "").strip()).name
        if not file_name:
            continue
        rows[file_name] = {
            field: (row.get(headers[column]) or "").strip()
            for column, field in CSV_COLUMNS.items()
            if column in headers and (row.get(headers[column]) or "").strip()
        }
    return rows


def table_values(row: dict[str, str] | None, table_name: str = "CSV table") -> dict[str, Any]:
    """The checked sample fields one table row gives; DatasetError naming the value otherwise."""
    try:
        return {field: checked(field, value) for field, value in (row or {}).items()}
    except DatasetError as exc:
        raise _prefixed(table_name, exc) from None


def atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a reader
    sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _existing_metadata(path: Path) -> dict[str, Any]:
    """The keys an existing ``.json`` sidecar holds, so writing ours keeps the ones we do not set."""
    try:
        old = json.loads(path.read_text(encoding="utf-8-sig")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def write_sample(sample: Sample) -> list[Path]:
    """Write ``sample``'s fields next to its audio so a scan reads them back: ``<name>.json`` with
    the metadata and the instrumental flag, and ``<name>.lyrics.txt`` with a sung track's lyrics.
    The lyrics keys leave the JSON (they would shadow the lyrics file); other keys stay."""
    audio = Path(sample.audio_path)
    meta_file = _sidecar(audio, METADATA_SUFFIX)
    meta = _existing_metadata(meta_file)
    for key in ("lyrics", "raw_lyrics", "formatted_lyrics", "genres", "vocal_language", "instrumental"):
        meta.pop(key, None)
    meta |= {
        "caption": sample.caption,
        "bpm": sample.bpm,
        "keyscale": sample.keyscale,
        "timesignature": sample.timesignature,
        "language": sample.language,
        "is_instrumental": sample.is_instrumental,
        "genre": sample.genre,
    }
    written = [atomic_write(meta_file, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")]
    if not sample.is_instrumental and sample.lyrics:
        written.append(atomic_write(_sidecar(audio, LYRICS_SUFFIXES[0]), sample.lyrics + "\n"))
    return written
