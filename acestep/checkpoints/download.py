"""``acestep-download``: fetch upstream checkpoints into a ``checkpoints/`` root (Hugging Face)."""

from __future__ import annotations

from pathlib import Path

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
    from huggingface_hub import snapshot_download

    repo_id, folder = repo_for(model)
    target = Path(checkpoints_dir) / folder if folder else Path(checkpoints_dir)
    target.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id=repo_id, local_dir=str(target), token=token)
    return target
