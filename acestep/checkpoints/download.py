"""Fetch registry models into a ``checkpoints/`` root (Hugging Face), and tell which are there.

What exists where is :mod:`acestep.checkpoints.registry`; this module does the downloads and the
presence checks (complete folders and their size on disk) that ``acestep-download`` reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from acestep.checkpoints.layout import DEFAULT_DIT, DIT_PREFIX, TEXT_ENCODER_DIR, VAE_DIR
from acestep.checkpoints.lm_folders import DEFAULT_LM, LmNotAvailable, find_lm_folder
from acestep.checkpoints.registry import (
    KNOWN_MODELS,
    MAIN,
    MAIN_REPO,
    MAIN_REPO_FOLDERS,
    SEPARATE_REPOS,
    repo_for,
)

__all__ = [
    "KNOWN_MODELS",
    "MAIN",
    "MAIN_REPO",
    "MAIN_REPO_FOLDERS",
    "SEPARATE_REPOS",
    "Presence",
    "download",
    "is_complete",
    "missing_models",
    "presence",
    "repo_for",
]
DIT_EXTRA = ("silence_latent.pt",)  # a DiT folder is unusable without it (see layout.resolve)


def download(model: str, checkpoints_dir: str | Path, token: str | None = None, force: bool = False) -> Path:
    """Fetch ``model`` into the root; a folder of the main repo fetches just that folder.

    An interrupted download resumes; ``force`` fetches every file again."""
    from huggingface_hub import snapshot_download

    repo_id, folder = repo_for(model)
    target = Path(checkpoints_dir) / folder if folder else Path(checkpoints_dir)
    target.mkdir(parents=True, exist_ok=True)
    only = [f"{model}/*"] if model in MAIN_REPO_FOLDERS else None
    snapshot_download(
        repo_id=repo_id, local_dir=str(target), token=token, allow_patterns=only, force_download=force
    )
    return target


@dataclass(frozen=True)
class Presence:
    """What of one registry model is in a root: ``complete`` (usable), any file at all, bytes on disk."""

    complete: bool
    started: bool
    size_bytes: int


def presence(root: str | Path, model: str) -> Presence:
    """``main`` is present when all four of its folders are complete; its size is theirs."""
    root = Path(root).expanduser()
    folders = MAIN_REPO_FOLDERS if model == MAIN else (model,)
    complete = all(is_complete(root / name, _extra(name)) for name in folders)
    started = any((root / name).is_dir() and any((root / name).iterdir()) for name in folders)
    return Presence(complete, started, sum(_size_on_disk(root / name) for name in folders))


def missing_models(
    root: str | Path, dit: str | None = None, lm: str | None = None, with_lm: bool = False
) -> list[str]:
    """The models a server with these settings needs and ``root`` lacks, in download order.

    A diffusers-layout folder is never fetched (it is built or copied whole). A folder counts as
    present when it is complete: an interrupted download leaves ``config.json`` without weights,
    and fetching again resumes it.
    """
    root = Path(root).expanduser()
    wanted: list[str] = []
    if not (root / "model_index.json").is_file():
        dit = dit or DEFAULT_DIT
        for name in (dit, VAE_DIR, TEXT_ENCODER_DIR):  # model names are folder names
            if not is_complete(root / name, DIT_EXTRA if name == dit else ()):
                wanted.append(name)
    if with_lm:
        try:
            found = find_lm_folder(root, lm, env={})
        except LmNotAvailable:
            found = None
        if found is None or not is_complete(found):
            wanted.append(found.name if found is not None else Path(lm).name if lm else DEFAULT_LM)
    return wanted


def is_complete(folder: Path, extra: tuple[str, ...] = ()) -> bool:
    """``config.json``, the weights (every shard a ``*.safetensors.index.json`` names) and ``extra``."""
    if not (folder / "config.json").is_file() or not all((folder / name).is_file() for name in extra):
        return False
    shards: set[str] = set()
    for index in folder.glob("*.safetensors.index.json"):
        shards |= set(json.loads(index.read_text()).get("weight_map", {}).values())
    if shards:
        return all((folder / shard).is_file() for shard in shards)
    return any(folder.glob("*.safetensors"))


def _extra(name: str) -> tuple[str, ...]:
    return DIT_EXTRA if name.startswith(DIT_PREFIX) else ()


def _size_on_disk(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (the hub's partial ``.incomplete`` files too)."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
