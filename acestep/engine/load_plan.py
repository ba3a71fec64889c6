"""What a load decides before any weight is read: the folders, the device, the precision, the
limits (with the ``MAX_CUDA_VRAM`` cap applied), the quantization and the residency plan that fits.

``AceStep.from_pretrained`` runs :func:`plan_load`, then loads and quantizes on the CPU and places
the weights by the plan. A DiT that does not fit the card is refused here (``memory/fit.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger

from acestep.checkpoints import CheckpointPaths, resolve
from acestep.checkpoints.lm_folders import LmNotAvailable, find_lm_folder
from acestep.engine.fast_dit import fast_mode
from acestep.engine.quantize import cuda_capability, usable_plan
from acestep.memory.devices import apply_vram_cap, resolve_device, total_gib
from acestep.memory.fit import fit_plan
from acestep.memory.limits import Limits
from acestep.memory.precision import PrecisionPlan, precision_plan
from acestep.memory.quantization import QuantizationPlan, plan_quantization
from acestep.memory.residency import ResidencyPlan


@dataclass(frozen=True)
class LoadPlan:
    paths: CheckpointPaths
    lm_folder: Path | None
    target: torch.device
    precision: PrecisionPlan
    fast: str
    limits: Limits
    plan: ResidencyPlan
    quantization: QuantizationPlan


def plan_load(
    path: str | Path,
    dit: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    limits: Limits | None = None,
    plan: ResidencyPlan | None = None,
    lm: str | Path | None = None,
    fast: str | None = None,
    quantization: QuantizationPlan | None = None,
) -> LoadPlan:
    """The decisions of ``AceStep.from_pretrained`` (its arguments, the same defaults)."""
    paths = resolve(path, dit)
    try:
        lm_folder = find_lm_folder(paths.root, lm)
    except LmNotAvailable as exc:
        if lm not in (None, ""):
            raise
        logger.warning(f"{exc}; requests that need the LM will be refused")
        lm_folder = None
    target = resolve_device(device)
    precision = precision_plan(target, dtype)
    limits = limits or Limits.for_gpu(total_gib(target))
    if limits.simulated:
        apply_vram_cap(target, limits.gib)
    quantization = usable_plan(
        quantization or plan_quantization(target.type, limits.gib, cuda_capability(target))
    )
    lm_name = lm_folder.name if lm_folder else None
    limits, plan, _ = fit_plan(
        limits, str(target), paths.variant.is_xl, precision, quantization, lm_name, plan
    )
    fast = fast_mode() if fast is None else fast
    return LoadPlan(paths, lm_folder, target, precision, fast, limits, plan, quantization)
