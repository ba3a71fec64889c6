"""Where the files of a checkpoint live: the upstream ``checkpoints/`` root or a diffusers folder.

Upstream root::

    checkpoints/
      acestep-v15-turbo/   config.json  model.safetensors  silence_latent.pt
      vae/                 config.json  diffusion_pytorch_model.safetensors
      Qwen3-Embedding-0.6B/ config.json model.safetensors tokenizer files

Diffusers folder: ``model_index.json`` plus ``transformer/``, ``condition_encoder/``,
``audio_tokenizer/``, ``audio_token_detokenizer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from acestep.checkpoints.registry import MAIN, download_hint
from acestep.checkpoints.variants import Variant, detect_variant

DIT_PREFIX = "acestep-v15-"
VAE_DIR = "vae"
TEXT_ENCODER_DIR = "Qwen3-Embedding-0.6B"
DEFAULT_DIT = "acestep-v15-turbo"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "diffusion_pytorch_model.safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or does not match the model classes."""


@dataclass(frozen=True)
class CheckpointPaths:
    """Resolved locations of every component of one DiT checkpoint."""

    layout: str  # "upstream" | "diffusers"
    root: Path
    dit_name: str
    variant: Variant
    dit_config: dict  # upstream: the DiT config.json; diffusers: the transformer config
    dit_dir: Path  # upstream DiT folder, or the diffusers root
    vae_dir: Path
    text_encoder_dir: Path
    tokenizer_dir: Path


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing file: {path}") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def find_weights(folder: Path) -> Path:
    """The single safetensors weights file of a component folder (pickle formats are refused)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    unsafe = [p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(pattern)]
    unsafe = [name for name in unsafe if name != "silence_latent.pt"]
    hint = f" (found {', '.join(sorted(unsafe))}; only safetensors weights are loaded)" if unsafe else ""
    raise CheckpointError(f"no weights file ({' or '.join(WEIGHT_FILES)}) in {folder}{hint}")


def list_dits(root: Path) -> list[str]:
    """DiT folder names under an upstream checkpoints root, sorted."""
    return sorted(p.name for p in root.glob(f"{DIT_PREFIX}*") if p.is_dir())


def default_dit(root: Path) -> str:
    """Upstream's UI default: ``acestep-v15-turbo`` if present, else the first ``acestep-v15-*``."""
    names = list_dits(root)
    if not names:
        raise CheckpointError(f"no {DIT_PREFIX}* model folder under {root}{download_hint(MAIN, root)}")
    return DEFAULT_DIT if DEFAULT_DIT in names else names[0]


def resolve(path: str | Path, dit: str | None = None) -> CheckpointPaths:
    """Resolve a path given by a user into component locations.

    ``path`` may be a diffusers folder (has ``model_index.json``), an upstream checkpoints root,
    or one upstream DiT folder (its parent is then the root). ``dit`` names the DiT folder
    (``acestep-v15-base``) in an upstream root.
    """
    path = Path(path).expanduser()
    if not path.exists():
        # A DiT folder's name is a model the downloader may know; anything else is a root.
        model, root = (path.name, path.parent) if path.name.startswith(DIT_PREFIX) else (MAIN, path)
        raise CheckpointError(f"checkpoint path does not exist: {path}{download_hint(model, root)}")
    if (path / "model_index.json").is_file():
        return _resolve_diffusers(path)
    if path.name.startswith(DIT_PREFIX) and (path / "config.json").is_file():
        if dit not in (None, path.name):
            raise CheckpointError(f"{path} is the DiT folder {path.name!r}, but dit={dit!r} was asked for")
        return _resolve_upstream(path.parent, path.name)
    return _resolve_upstream(path, dit or default_dit(path))


def _resolve_upstream(root: Path, dit_name: str) -> CheckpointPaths:
    dit_dir = root / dit_name
    if not dit_dir.is_dir():
        available = ", ".join(list_dits(root)) or "none"
        raise CheckpointError(
            f"DiT folder {dit_name!r} not found under {root} (available: {available})"
            + download_hint(dit_name, root)
        )
    hint = download_hint(dit_name, root)  # an incomplete folder: the same command resumes it
    if not (dit_dir / "config.json").is_file():
        raise CheckpointError(f"missing file: {dit_dir / 'config.json'}{hint}")
    config = read_json(dit_dir / "config.json")
    try:
        find_weights(dit_dir)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{hint}") from None
    if not (dit_dir / "silence_latent.pt").is_file():
        raise CheckpointError(f"{dit_dir} has no silence_latent.pt (it is required to load a DiT){hint}")
    for needed in (VAE_DIR, TEXT_ENCODER_DIR):
        if not (root / needed).is_dir():
            raise CheckpointError(f"missing folder {root / needed}{download_hint(needed, root)}")
    return CheckpointPaths(
        layout="upstream",
        root=root,
        dit_name=dit_name,
        variant=detect_variant(config, dit_name),
        dit_config=config,
        dit_dir=dit_dir,
        vae_dir=root / VAE_DIR,
        text_encoder_dir=root / TEXT_ENCODER_DIR,
        tokenizer_dir=root / TEXT_ENCODER_DIR,
    )


def _resolve_diffusers(root: Path) -> CheckpointPaths:
    index = read_json(root / "model_index.json")
    if index.get("_class_name") != "AceStepPipeline":
        raise CheckpointError(
            f"{root / 'model_index.json'} is not an AceStepPipeline ({index.get('_class_name')!r})"
        )
    for component in ("transformer", "condition_encoder", "vae", "text_encoder", "tokenizer"):
        if component not in index or not (root / component).is_dir():
            raise CheckpointError(f"diffusers checkpoint {root} lacks the {component!r} component")
    config = read_json(root / "transformer" / "config.json")
    return CheckpointPaths(
        layout="diffusers",
        root=root,
        dit_name=root.name,
        variant=detect_variant(config, root.name),
        dit_config=config,
        dit_dir=root,
        vae_dir=root / "vae",
        text_encoder_dir=root / "text_encoder",
        tokenizer_dir=root / "tokenizer",
    )
