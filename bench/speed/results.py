"""Reading ``python -m bench run`` result files: validation, the case each belongs to, the newest per case."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

CASE_KEYS = ("config", "task", "seconds", "steps", "batch")
# ``--quantize`` and ``--vram-gib`` make a case of their own; older results have neither key.
SETUP_DEFAULTS = {"quantize": "none", "vram_gib": None}
# (config, task, seconds, steps, batch, quantize, vram_gib)
CaseKey = tuple[str, str, float, int, int, str, float | None]


class ReportError(Exception):
    """A result file that cannot be reported: unreadable, not JSON, or missing a required key."""


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(mapping: object, key: str, path: Path | str, where: str = "") -> object:
    if not isinstance(mapping, dict):
        raise ReportError(f"{path}: {where.rstrip('.') or 'document'} is not a JSON object")
    if key not in mapping:
        raise ReportError(f"{path}: missing required key {where + key!r}")
    return mapping[key]


def parse_date(value: object, path: Path | str = "<result>") -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReportError(f"{path}: key 'date' is not an ISO 8601 time: {value!r}") from exc
    # Naive stamps are taken as UTC so they compare with the runner's "...Z" ones.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def case_key(doc: dict, path: Path | str = "<result>") -> CaseKey:
    """The (config, task, seconds, steps, batch, quantize, vram_gib) that identifies a document's case."""
    case = require(doc, "case", path)
    values = [require(case, key, path, "case.") for key in CASE_KEYS]
    for key, value in zip(CASE_KEYS[2:], values[2:], strict=True):
        if not is_number(value):
            raise ReportError(f"{path}: key 'case.{key}' is not a number: {value!r}")
    config, task, seconds, steps, batch = values
    quantize, vram = (case.get(key, default) for key, default in SETUP_DEFAULTS.items())
    if vram is not None and not is_number(vram):
        raise ReportError(f"{path}: key 'case.vram_gib' is not a number: {vram!r}")
    vram = None if vram is None else float(vram)
    return str(config), str(task), float(seconds), int(steps), int(batch), str(quantize), vram


def full_key(key: tuple) -> CaseKey:
    """A required case's 5-tuple as the key of its unquantized, uncapped result."""
    return (*key[:5], *SETUP_DEFAULTS.values()) if len(key) == 5 else key


def _validate(doc: object, path: Path) -> bool:
    """Check the keys the report relies on; False for a document of another kind (skipped)."""
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    if require(doc, "kind", path) != "speed":
        return False
    parse_date(require(doc, "date", path), path)
    case_key(doc, path)
    runs = require(doc, "runs", path)
    if not isinstance(runs, list):
        raise ReportError(f"{path}: key 'runs' is not a list")
    for i, run in enumerate(runs):
        where = f"runs[{i}]."
        require(run, "impl", path, where)
        if "error" not in run and not is_number(require(run, "wall_s", path, where)):
            raise ReportError(f"{path}: key '{where}wall_s' is not a number")
    return True


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given, and every ``*.json`` (sorted) in a directory."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise ReportError(f"{path}: no such file or directory")
    return files


def load_results(paths: list[Path]) -> list[dict]:
    """Read and validate result documents; documents whose ``kind`` is not ``speed`` are skipped."""
    results = []
    for path in expand_inputs(paths):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportError(f"{path}: cannot read: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON: {exc}") from exc
        if _validate(doc, path):
            results.append(doc)
    return results


def latest_by_case(results: list[dict]) -> dict[CaseKey, dict]:
    """The newest document (by ``date``) per case, ordered by config, task, batch."""
    chosen: dict[CaseKey, dict] = {}
    for doc in results:
        key = case_key(doc)
        if key not in chosen or parse_date(doc["date"]) > parse_date(chosen[key]["date"]):
            chosen[key] = doc

    def order(key: CaseKey) -> tuple:
        config, task, seconds, steps, batch, quantize, vram = key
        return config, task, batch, seconds, steps, quantize, vram or 0.0

    return dict(sorted(chosen.items(), key=lambda item: order(item[0])))
