"""Model variants (turbo / base / SFT, 2B or XL, stem SFT) and their sampling defaults (docs/tasks.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Tasks each family was trained for; upstream never enforces this, acestep does.
TURBO_TASKS = frozenset({"text2music", "repaint", "cover", "cover-nofsq"})
ALL_TASKS = TURBO_TASKS | {"extract", "lego", "complete"}

# The 2B DiTs are 2048 wide; the 4B XL family is 2560 wide, 32 layers (docs/models.md).
BASE_HIDDEN_SIZE = 2048
# Upstream tells XL apart by the name: "xl" as its own token (acestep-v15-xl-turbo), not "xl" inside
# another word.
_XL_TOKEN = re.compile(r"(?:^|[-_./])xl(?:[-_./]|$)")


@dataclass(frozen=True)
class Variant:
    name: str  # "turbo" | "base" | "sft"
    is_turbo: bool
    is_xl: bool
    default_steps: int  # what the CLI uses when --steps is not given
    uses_guidance: bool
    # A stem ("lego") SFT checkpoint: its config sets ``is_lego_sft``; its captions carry a
    # global (whole song) and a local (this stem) part (engine/prompts.py).
    is_lego_sft: bool = False

    @property
    def tag(self) -> str:
        """The variant as LoRA adapters record it: ``base``, ``turbo``, ``sft``, ``xl-base``, ..."""
        return ("xl-" if self.is_xl else "") + self.name

    @property
    def size(self) -> str:
        """``XL`` (4B) or ``2B``: adapters and tiers differ between the two."""
        return "XL" if self.is_xl else "2B"

    @property
    def supported_tasks(self) -> frozenset[str]:
        return TURBO_TASKS if self.is_turbo else ALL_TASKS


def is_xl_name(folder_name: str) -> bool:
    """``acestep-v15-xl-turbo`` -> True; ``xl`` must stand as its own dash-separated part."""
    return bool(_XL_TOKEN.search(folder_name.lower()))


def detect_variant(config: dict, folder_name: str = "") -> Variant:
    """Decide the variant from ``is_turbo`` / ``model_version`` / ``hidden_size`` /
    ``is_lego_sft`` in the config, then the folder name."""
    version = str(config.get("model_version") or "").lower()
    name = folder_name.lower()
    is_turbo = bool(config.get("is_turbo")) or version == "turbo" or ("turbo" in name and not version)
    hidden = config.get("hidden_size", BASE_HIDDEN_SIZE)
    is_xl = (isinstance(hidden, int) and hidden > BASE_HIDDEN_SIZE) or is_xl_name(name)
    lego_sft = config.get("is_lego_sft") is True
    if is_turbo:
        return Variant("turbo", True, is_xl, 8, False, lego_sft)
    if "sft" in version or "sft" in name or lego_sft:
        return Variant("sft", False, is_xl, 50, True, lego_sft)
    return Variant("base", False, is_xl, 50, True, lego_sft)
