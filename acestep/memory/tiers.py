"""VRAM tiers: upstream ACE-Step's later table (the one its GPU guide and users follow).

The tier is looked up from the GPU's total memory in GiB (``MAX_CUDA_VRAM`` lowers it). Whether
a model fits the tier (the XL DiT, a quantization mode, a streamed DiT) is computed from its weight
bytes by acestep/memory/fit.py, not rated here. A machine
without a GPU gets the ``cpu`` tier: there is no VRAM to protect, so it takes the unlimited
tier's limits with nothing offloaded (upstream filed CPU under tier1; see docs/memory.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Tier:
    name: str
    upper_gib: float  # the tier covers sizes up to this bound
    upper_inclusive: bool
    max_duration_lm: float  # seconds, when the LM runs for the request
    max_duration: float  # seconds, without the LM
    max_batch_lm: int
    max_batch: int
    lm_sizes: tuple[str, ...]  # LM sizes allowed on this tier
    lm_default: bool  # the LM is loaded unless ACESTEP_INIT_LLM says otherwise
    offload_to_cpu: bool  # text encoder and VAE (and a transformers LM) live on the CPU between uses
    offload_dit_to_cpu: bool  # the DiT and condition encoder too

    @property
    def recommended_lm(self) -> str | None:
        return self.lm_sizes[-1] if self.lm_sizes else None

    def as_dict(self) -> dict:
        return asdict(self)


INF = float("inf")

# Ordered by size; the first tier whose bound admits the size wins.
TIERS: tuple[Tier, ...] = (
    Tier("tier1", 4, True, 240, 360, 1, 1, (), False, True, True),
    Tier("tier2", 6, True, 480, 600, 1, 1, (), False, True, True),
    Tier("tier3", 8, True, 480, 600, 2, 2, ("0.6B",), True, True, True),
    Tier("tier4", 12, True, 480, 600, 2, 4, ("0.6B",), True, True, True),
    Tier("tier5", 15.5, False, 480, 600, 4, 4, ("0.6B", "1.7B"), True, True, False),
    Tier("tier6a", 20, False, 480, 600, 4, 8, ("0.6B", "1.7B"), True, True, False),
    Tier("tier6b", 24, True, 480, 480, 8, 8, ("0.6B", "1.7B", "4B"), True, False, False),
    Tier("unlimited", INF, True, 600, 600, 8, 8, ("0.6B", "1.7B", "4B"), True, False, False),
)
CPU_TIER = Tier("cpu", 0, True, 600, 600, 8, 8, ("0.6B", "1.7B", "4B"), False, False, False)

LM_SIZES = ("0.6B", "1.7B", "4B")


def tier_for_gib(gib: float | None) -> Tier:
    """The tier of a GPU with ``gib`` GiB in total; None (no GPU) is the ``cpu`` tier."""
    if gib is None or gib <= 0:
        return CPU_TIER
    for tier in TIERS:
        if gib < tier.upper_gib or (tier.upper_inclusive and gib == tier.upper_gib):
            return tier
    return TIERS[-1]


def tier_by_name(name: str) -> Tier:
    for tier in (*TIERS, CPU_TIER):
        if tier.name == name:
            return tier
    raise KeyError(name)


def lm_size_of(model_name: str) -> str | None:
    """``acestep-5Hz-lm-1.7B`` -> ``1.7B``; None when the name carries no known size."""
    lowered = model_name.lower()
    for size in sorted(LM_SIZES, key=len, reverse=True):
        if f"-{size.lower()}" in lowered:
            return size
    return None
