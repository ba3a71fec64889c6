"""Which models ``acestep-download`` can fetch, from which Hugging Face repo, into which folder, and
the exact command that fetches one (upstream's downloader registry; docs/install.md).

A leaf module: the layout and LM errors import it to name the command that fixes a missing folder.
"""

from __future__ import annotations

import shlex
from pathlib import Path

MAIN = "main"
MAIN_REPO = "ACE-Step/Ace-Step1.5"
# The main repo fills the root with the turbo DiT, the VAE, the text encoder and the 1.7B LM.
MAIN_REPO_FOLDERS = ("acestep-v15-turbo", "vae", "Qwen3-Embedding-0.6B", "acestep-5Hz-lm-1.7B")
# The 4B XL DiTs (hidden 2560, 32 layers): each repo holds about 20 GB of float32 shards, about
# 9.3 GiB once loaded in bf16; where they fit is computed by acestep/memory/fit.py (docs/memory.md).
XL_DITS = ("acestep-v15-xl-base", "acestep-v15-xl-sft", "acestep-v15-xl-turbo")
# Each of these is its own repo ``ACE-Step/<name>``, downloaded into ``<root>/<name>``.
SEPARATE_REPOS = (
    "acestep-v15-base",
    "acestep-v15-sft",
    "acestep-v15-turbo-shift1",
    "acestep-v15-turbo-shift3",
    "acestep-v15-turbo-continuous",
    *XL_DITS,
    "acestep-5Hz-lm-0.6B",
    "acestep-5Hz-lm-4B",
)
KNOWN_MODELS = (MAIN, *MAIN_REPO_FOLDERS, *SEPARATE_REPOS)
COMMAND = "acestep-download"


def repo_for(model: str) -> tuple[str, str | None]:
    """(repo id, sub-folder of the root to download into; None = the root itself)."""
    if model in (MAIN, *MAIN_REPO_FOLDERS):
        return MAIN_REPO, None
    if model in SEPARATE_REPOS:
        return f"ACE-Step/{model}", model
    raise ValueError(f"unknown model {model!r}; known: {', '.join(KNOWN_MODELS)}")


def download_command(model: str, root: str | Path) -> str:
    """The shell command that puts ``model`` into the checkpoints root ``root``."""
    where = f"--dir {shlex.quote(str(root))}"
    return f"{COMMAND} {where}" if model == MAIN else f"{COMMAND} --model {model} {where}"


def download_hint(model: str, root: str | Path) -> str:
    """``"; download it with: <command>"`` for a model the downloader knows, else ``""``."""
    return f"; download it with: {download_command(model, root)}" if model in KNOWN_MODELS else ""
