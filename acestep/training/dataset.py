"""A training dataset: a folder of audio files with upstream ACE-Step's sidecars, or the dataset
JSON file upstream's "Save Dataset" writes (``{"metadata": {...}, "samples": [...]}``).

Torch-free at import and call time. Each audio header is read in a bounded child process
(:mod:`acestep.engine.audio_probe`), with the same length bounds as a generation's inputs. A file
that cannot be used is left out with its reason in ``Dataset.problems``; the rest still loads. A
dataset that cannot be used at all raises :class:`DatasetError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from acestep.tasks import MAX_NAME_CHARS, MAX_PATH_CHARS, MAX_TEXT_CHARS
from acestep.training.audio_files import MAX_DATASET_FILES, build_samples, find_audio
from acestep.training.sample import (
    AUDIO_SUFFIXES,
    CHECKS,
    EDITABLE,
    MAX_GENRE_RATIO,
    TAG_POSITIONS,
    DatasetError,
    Sample,
    apply_changes,
    entry_values,
    upstream_entry,
)
from acestep.training.sidecars import (
    atomic_write,
    inside,
    read_tables,
    sidecar_values,
    table_values,
    write_sample,
)

MAX_DATASET_JSON_BYTES = 64 * 2**20  # 5000 samples with long lyrics, written twice as upstream does
SHOWN_PROBLEMS = 5  # per-file problems quoted in a refusal; the rest are counted
SHOWN_NAMES = 20  # sample names an unknown name's refusal lists

__all__ = [
    "AUDIO_SUFFIXES",
    "MAX_DATASET_FILES",
    "Dataset",
    "DatasetError",
    "Sample",
    "edit",
    "load",
    "open_dataset",
    "require_usable",
    "save",
    "scan",
    "write_sidecars",
]


@dataclass
class Dataset:
    """The usable samples, and why each left-out file was left out."""

    name: str
    folder: str | None
    samples: list[Sample]
    problems: dict[str, str] = field(default_factory=dict)  # file name -> why it was left out
    custom_tag: str = ""  # upstream's trigger word, put into every caption (caption_for)
    tag_position: str = "prepend"
    genre_ratio: int = 0  # upstream: the percentage of samples trained on their genre tags

    def sample(self, name: str) -> Sample:
        for sample in self.samples:
            if sample.name == name:
                return sample
        known = ", ".join(s.name for s in self.samples[:SHOWN_NAMES]) or "none"
        more = f" and {len(self.samples) - SHOWN_NAMES} more" if len(self.samples) > SHOWN_NAMES else ""
        raise DatasetError(
            f"no sample named {name!r} in dataset {self.name!r}; the samples are {known}{more}"
        )

    @property
    def total_duration(self) -> float:
        return sum(s.duration or 0.0 for s in self.samples)

    @property
    def labelled(self) -> int:
        return sum(s.labelled for s in self.samples)

    def caption_for(self, sample: Sample) -> str:
        """The caption training reads: upstream's ``get_full_caption`` with the custom tag."""
        tag, caption = self.custom_tag, sample.caption
        if not tag:
            return caption
        if self.tag_position == "replace" or not caption:
            return tag
        return f"{tag}, {caption}" if self.tag_position == "prepend" else f"{caption}, {tag}"

    def to_json(self) -> dict[str, Any]:
        """Upstream's dataset JSON: its ``DatasetMetadata`` and ``AudioSample`` keys (plus ``folder``
        and each sample's ``name``, which upstream's loader passes over)."""
        return {
            "metadata": {
                "name": self.name,
                "custom_tag": self.custom_tag,
                "tag_position": self.tag_position,
                "created_at": "",
                "num_samples": len(self.samples),
                "all_instrumental": all(s.is_instrumental for s in self.samples),
                "genre_ratio": self.genre_ratio,
                "folder": self.folder,
            },
            "samples": [upstream_entry(s, self.custom_tag, i) for i, s in enumerate(self.samples)],
        }

    def fingerprint(self) -> str:
        """sha256 over what training reads: each sample's audio file (path, size, mtime) and text
        fields, in order, and the dataset's tag settings. Equal across runs while nothing changes."""
        digest = hashlib.sha256()
        settings = {
            "custom_tag": self.custom_tag,
            "tag_position": self.tag_position,
            "genre_ratio": self.genre_ratio,
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        for sample in self.samples:
            try:
                stat = os.stat(sample.audio_path)
                audio: list[int] | None = [stat.st_size, stat.st_mtime_ns]
            except OSError:
                audio = None
            record = {"name": sample.name, "audio_path": sample.audio_path, "audio": audio}
            record |= {f: getattr(sample, f) for f in EDITABLE}
            digest.update(b"\n" + json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()


def scan(folder: str | Path, name: str | None = None) -> Dataset:
    """The dataset a folder holds: every audio file under it (sub-folders too, as upstream), with
    its sidecars and the folder's CSV table."""
    path = Path(folder)
    if not path.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    base = path.resolve()
    files, problems = find_audio(base)
    rows, table_problems = read_tables(base)
    problems |= table_problems
    found = []
    for rel, audio in files:
        try:
            values = table_values(rows.get(audio.name)) | sidecar_values(audio, base)
        except DatasetError as exc:
            problems[rel] = str(exc)
            continue
        found.append((rel, audio, audio.stem, values))
    samples = build_samples(found, problems)
    title = checked_name(name) if name is not None else base.name
    return Dataset(name=title, folder=str(base), samples=samples, problems=problems)


def checked_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise DatasetError(f"a dataset name is 1 to {MAX_NAME_CHARS} characters, got {name!r}")
    return name.strip()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path} is not a file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_DATASET_JSON_BYTES + 1)
    except OSError as exc:
        raise DatasetError(f"{path.name} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_DATASET_JSON_BYTES:
        raise DatasetError(f"{path.name} is over {MAX_DATASET_JSON_BYTES} bytes, the dataset file limit")
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name} is not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:
        raise DatasetError(f"{path.name} is not valid JSON ({exc})") from None


def _settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The dataset-level settings of upstream's ``metadata``; DatasetError when one is wrong."""
    tag = CHECKS["caption"]("metadata.custom_tag", meta.get("custom_tag") or "")
    position = meta.get("tag_position") or "prepend"
    if position not in TAG_POSITIONS:
        raise DatasetError(
            f"metadata.tag_position must be one of {', '.join(TAG_POSITIONS)}, got {position!r}"
        )
    ratio = meta.get("genre_ratio") or 0
    if isinstance(ratio, bool) or not isinstance(ratio, int) or not 0 <= ratio <= MAX_GENRE_RATIO:
        raise DatasetError(
            f"metadata.genre_ratio must be a whole number from 0 to {MAX_GENRE_RATIO}, got {ratio!r}"
        )
    return {"custom_tag": tag, "tag_position": position, "genre_ratio": ratio}


def _entry_audio(entry: dict[str, Any], here: Path, root: Path | None) -> Path:
    """An entry's audio file: ``audio_path`` (relative to the dataset file's folder), else
    ``filename`` there. DatasetError when it is missing or outside ``root``."""
    candidates = [entry.get("audio_path"), entry.get("filename")]
    texts = [c for c in candidates if isinstance(c, str) and c.strip()]
    if not texts:
        raise DatasetError("the sample names no audio_path or filename")
    for text in texts:
        if len(text) > MAX_PATH_CHARS:
            raise DatasetError(f"the audio path is over {MAX_PATH_CHARS} characters")
        path = Path(here, text)  # an absolute text replaces ``here``
        if path.is_file():
            if root is not None and not inside(path, root):
                raise DatasetError("the audio file lies outside the folder datasets may read")
            if path.suffix.lower() not in AUDIO_SUFFIXES:
                raise DatasetError(f"not an audio file (the suffixes are {', '.join(AUDIO_SUFFIXES)})")
            return path.absolute()
    raise DatasetError(f"the audio file {texts[0]} is missing")


def load(path: str | Path, root: str | Path | None = None) -> Dataset:
    """A dataset JSON file, ours or upstream's (or side-step's bare list of samples). A sample that
    cannot be used is a problem and the rest loads. With ``root``, every audio file must lie in it."""
    file = Path(path)
    if root is not None and not inside(file, Path(root).resolve()):
        raise DatasetError(f"{file.name} lies outside the folder datasets may read")
    data = _read_json(file)
    meta = data.get("metadata", {}) if isinstance(data, dict) else {}
    entries = data.get("samples") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not isinstance(meta, dict):
        raise DatasetError(f"{file.name} is not a dataset file: it needs a list of samples")
    if len(entries) > MAX_DATASET_FILES:
        raise DatasetError(
            f"{file.name} has {len(entries)} samples; a dataset may have at most {MAX_DATASET_FILES}"
        )
    settings = _settings(meta)
    here, base = file.parent.absolute(), Path(root).resolve() if root is not None else None
    found, problems, keys = [], {}, set()
    for index, entry in enumerate(entries):
        label = _entry_label(entry, index)
        key = label if label not in keys else f"{label} (#{index + 1})"
        keys.add(key)
        try:
            if not isinstance(entry, dict):
                raise DatasetError("a sample must be a JSON object")
            audio = _entry_audio(entry, here, base)
            found.append((key, audio, _wanted_name(entry, audio), entry_values(entry)))
        except DatasetError as exc:
            problems[key] = str(exc)
    samples = build_samples(found, problems)
    name = _text_or(meta.get("name"), MAX_NAME_CHARS, file.stem)
    folder = _text_or(meta.get("folder"), MAX_PATH_CHARS, None)
    return Dataset(name=name, folder=folder, samples=samples, problems=problems, **settings)


def _text_or(value: Any, limit: int, default: str | None) -> str | None:
    """A dataset file's optional label: its text when it is one of a sane length, else ``default``."""
    return value.strip() if isinstance(value, str) and 0 < len(value.strip()) <= limit else default


def _wanted_name(entry: dict[str, Any], audio: Path) -> str:
    """The name a dataset file gave the sample (ours writes one), else its file's stem."""
    return _text_or(entry.get("name"), MAX_NAME_CHARS, audio.stem) or audio.stem


def _entry_label(entry: Any, index: int) -> str:
    if isinstance(entry, dict):
        for key in ("filename", "audio_path"):
            if isinstance(entry.get(key), str) and entry[key].strip():
                return Path(entry[key]).name[:MAX_TEXT_CHARS]
    return f"samples[{index}]"


def save(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` as upstream's dataset JSON, atomically (a temporary file, then a rename)."""
    data = dataset.to_json()
    data["metadata"]["created_at"] = datetime.now().isoformat(timespec="seconds")
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        return atomic_write(Path(path), text)
    except OSError as exc:
        raise DatasetError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None


def open_dataset(path: str | Path, root: str | Path | None = None) -> Dataset:
    """A folder is scanned; a ``.json`` file is loaded."""
    target = Path(path)
    if target.is_dir():
        if root is not None and not inside(target, Path(root).resolve()):
            raise DatasetError(f"{path} lies outside the folder datasets may read")
        return scan(target)
    if target.is_file() and target.suffix.lower() == ".json":
        return load(target, root)
    if not target.exists():
        raise DatasetError(f"{path} does not exist")
    raise DatasetError(f"{path} is neither a folder of audio files nor a dataset .json file")


def edit(dataset: Dataset, name: str, **changes: Any) -> Sample:
    """Change one sample's fields (checked; the sample is unchanged when one is refused)."""
    if not changes:
        raise DatasetError("nothing to change: give at least one field")
    sample = dataset.sample(name)
    trial = Sample(**sample.as_dict())
    apply_changes(trial, changes)
    for key, value in trial.as_dict().items():
        setattr(sample, key, value)
    return sample


def write_sidecars(dataset: Dataset, names: list[str] | None = None) -> list[Path]:
    """Write each sample's fields (or only ``names``') as sidecars next to its audio file, so a
    later scan of the folder reads the edits back. Returns the files written."""
    samples = [dataset.sample(n) for n in names] if names is not None else dataset.samples
    written: list[Path] = []
    for sample in samples:
        try:
            written += write_sample(sample)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise DatasetError(
                f"cannot write the sidecars of {Path(sample.audio_path).name}: {reason}"
            ) from None
    return written


def require_usable(dataset: Dataset) -> None:
    """DatasetError when no sample can be used, quoting the per-file problems (clipped)."""
    if dataset.samples:
        return
    where = dataset.folder or dataset.name
    if not dataset.problems:
        raise DatasetError(f"dataset {where} has no audio files ({', '.join(AUDIO_SUFFIXES)})")
    shown = [f"{file}: {why}" for file, why in list(dataset.problems.items())[:SHOWN_PROBLEMS]]
    more = len(dataset.problems) - len(shown)
    tail = f"; and {more} more" if more > 0 else ""
    raise DatasetError(f"dataset {where} has no usable samples: {'; '.join(shown)}{tail}")
