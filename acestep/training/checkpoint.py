"""A run's checkpoints: the adapter, the optimizer, the schedule and the RNG after an update.

``<run>/checkpoints/step-00000012/`` holds ``adapter.safetensors``, ``optimizer.pt`` (a plain
state dict of tensors and numbers, read back with ``torch.load(weights_only=True)``: no code runs
on load), ``rng.safetensors`` and ``state.json`` (step, epoch, the loss history and the run's
identity). A checkpoint is written under a temporary name and renamed, so a crash leaves the
previous one whole. ``latest`` is the highest complete step.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from acestep.training.adapter import TrainingError
from acestep.training.checkpoint_files import checkpoint_dir, latest, steps


@dataclass
class RunState:
    step: int  # optimizer updates done
    epoch: int  # the epoch the next update belongs to
    identity: dict  # TrainingRequest.run_identity() of the run
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) per update
    dataset: str = ""  # the dataset's fingerprint


def save(
    run: Path,
    state: RunState,
    adapter: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Path:
    final = checkpoint_dir(run, state.step)
    partial = final.with_name(f".{final.name}.{os.getpid()}.part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(partial / "adapter.safetensors")
    )
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, partial / "optimizer.pt"
    )
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(partial / "rng.safetensors"))
    (partial / "state.json").write_text(json.dumps(asdict(state), indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


def load_state(folder: Path) -> RunState:
    data = json.loads((folder / "state.json").read_text())
    data["losses"] = [tuple(pair) for pair in data.get("losses", [])]
    return RunState(**data)


def restore(
    folder: Path, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> dict[str, torch.Tensor]:
    """Load the optimizer, schedule and RNG in place; return the adapter's tensors."""
    try:
        saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng = load_file(str(folder / "rng.safetensors"))
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise TrainingError(f"checkpoint {folder.name} cannot be resumed: {exc}") from None
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return load_file(str(folder / "adapter.safetensors"))


def identity_differences(saved: dict, wanted: dict) -> list[str]:
    return sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))


__all__ = [
    "RunState",
    "checkpoint_dir",
    "identity_differences",
    "latest",
    "load_state",
    "restore",
    "save",
    "steps",
]
