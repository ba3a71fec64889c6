"""``acestep-download``: fetch upstream checkpoints into a ``checkpoints/`` root (Hugging Face)."""

from __future__ import annotations

import json
from pathlib import Path

from acestep.checkpoints.layout import DEFAULT_DIT, TEXT_ENCODER_DIR, VAE_DIR
from acestep.checkpoints.lm_folders import LM_PREFIX, LmNotAvailable, find_lm_folder

MAIN_REPO = "ACE-Step/Ace-Step1.5"
# The main repo fills the root with the turbo DiT, the VAE, the text encoder and the 1.7B LM.
MAIN_REPO_FOLDERS = ("acestep-v15-turbo", "vae", "Qwen3-Embedding-0.6B", "acestep-5Hz-lm-1.7B")
SEPARATE_REPOS = (
    "acestep-v15-base",
    "acestep-v15-sft",
    "acestep-v15-turbo-shift1",
    "acestep-v15-turbo-shift3",
    "acestep-v15-turbo-continuous",
    "acestep-5Hz-lm-0.6B",
    "acestep-5Hz-lm-4B",
)
KNOWN_MODELS = ("main", *MAIN_REPO_FOLDERS, *SEPARATE_REPOS)


def repo_for(model: str) -> tuple[str, str | None]:
    """(repo id, sub-folder of the root to download into; None = the root itself)."""
    if model in ("main", *MAIN_REPO_FOLDERS):
        return MAIN_REPO, None
    if model in SEPARATE_REPOS:
        return f"ACE-Step/{model}", model
    raise ValueError(f"unknown model {model!r}; known: {', '.join(KNOWN_MODELS)}")


def download(model: str, checkpoints_dir: str | Path, token: str | None = None) -> Path:
    """Fetch ``model`` into the root; a folder of the main repo fetches just that folder."""
    from huggingface_hub import snapshot_download

    repo_id, folder = repo_for(model)
    target = Path(checkpoints_dir) / folder if folder else Path(checkpoints_dir)
    target.mkdir(parents=True, exist_ok=True)
    only = [f"{model}/*"] if model in MAIN_REPO_FOLDERS else None
    snapshot_download(repo_id=repo_id, local_dir=str(target), token=token, allow_patterns=only)
    return target


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
            extra = ("silence_latent.pt",) if name == dit else ()
            if not is_complete(root / name, extra):
                wanted.append(name)
    if with_lm:
        try:
            found = find_lm_folder(root, lm, env={})
        except LmNotAvailable:
            found = None
        if found is None or not is_complete(found):
            wanted.append(found.name if found is not None else Path(lm).name if lm else f"{LM_PREFIX}1.7B")
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
