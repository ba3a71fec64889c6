"""Where a run's checkpoints are and which are complete (torch-free: the API process reads it)."""

from __future__ import annotations

from pathlib import Path

PREFIX = "step-"


def checkpoint_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"{PREFIX}{step:08d}"


def steps(run: Path) -> list[int]:
    """The complete checkpoints' steps (those with their ``state.json``), ascending."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if entry.name.startswith(PREFIX) and (entry / "state.json").is_file():
            try:
                found.append(int(entry.name.removeprefix(PREFIX)))
            except ValueError:
                continue
    return sorted(found)


def latest(run: Path) -> Path | None:
    found = steps(run)
    return checkpoint_dir(run, found[-1]) if found else None


__all__ = ["PREFIX", "checkpoint_dir", "latest", "steps"]
