"""Whether a resolved checkpoint can run a task, decided before any weight loads.

Turbo DiTs were trained for text2music, repaint and cover only (``variants.py``). A request for
lego, extract or complete on one is refused with the model to use instead: one already in the
checkpoints root, or the command that downloads one.
"""

from __future__ import annotations

from pathlib import Path

from acestep.checkpoints.layout import CheckpointError, CheckpointPaths, list_dits, read_json
from acestep.checkpoints.registry import SEPARATE_REPOS, download_command
from acestep.checkpoints.variants import Variant, detect_variant


class TaskNotSupported(ValueError):
    """The loaded (or about to be loaded) DiT variant was not trained for the requested task."""


def require_task(paths: CheckpointPaths, task: str, flow_edit: bool = False) -> None:
    """Raise :class:`TaskNotSupported` naming the fix when ``paths``' variant cannot run ``task``
    (or, ``flow_edit``, a flow edit: it samples with guidance, so base and SFT models only)."""
    variant = paths.variant
    if flow_edit and variant.is_turbo:
        message = f"flow_edit_morph needs a base or SFT model; {paths.dit_name} is a turbo model"
        raise TaskNotSupported(message + _instead(paths, "lego"))  # lego: any base-family model
    if task in variant.supported_tasks:
        return
    message = (
        f"task {task!r} needs a base or SFT model; {paths.dit_name} is a {variant.name} model "
        f"(it supports {', '.join(sorted(variant.supported_tasks))})"
    )
    raise TaskNotSupported(message + _instead(paths, task))


def _instead(paths: CheckpointPaths, task: str) -> str:
    if paths.layout != "upstream":
        return "; point --checkpoint at a base or SFT checkpoint"
    root = paths.root
    present = [name for name in list_dits(root) if _can_run(_variant_of(root / name), task, paths.variant)]
    if present:
        name = present[0]
        return f"; {name} in {root} can: load it with --dit {name} (servers: ACESTEP_CONFIG_PATH={name})"
    fetchable = [name for name in SEPARATE_REPOS if _can_run(detect_variant({}, name), task, paths.variant)]
    if not fetchable:
        return ""
    name = fetchable[0]
    return (
        f"; download {name} with: {download_command(name, root)}, then load it with --dit {name} "
        f"(servers: ACESTEP_CONFIG_PATH={name})"
    )


def _can_run(candidate: Variant, task: str, loaded: Variant) -> bool:
    """A model of the same size (2B or XL) trained for ``task``."""
    return task in candidate.supported_tasks and candidate.is_xl == loaded.is_xl


def _variant_of(folder: Path) -> Variant:
    """From the folder's config when it can be read (a broken one is reported when it is loaded)."""
    try:
        config = read_json(folder / "config.json")
    except CheckpointError:
        config = {}
    return detect_variant(config, folder.name)
