"""Model variants (turbo / base / SFT) and their sampling defaults (docs/tasks.md)."""

from __future__ import annotations

from dataclasses import dataclass

# Tasks each family was trained for; upstream never enforces this, acestep does.
TURBO_TASKS = frozenset({"text2music", "repaint", "cover"})
ALL_TASKS = frozenset({"text2music", "repaint", "cover", "extract", "lego", "complete"})


@dataclass(frozen=True)
class Variant:
    name: str  # "turbo" | "base" | "sft"
    is_turbo: bool
    is_xl: bool
    default_steps: int  # what the CLI uses when --steps is not given
    uses_guidance: bool
    accepts_custom_timesteps: bool

    @property
    def tag(self) -> str:
        """The variant as LoRA adapters record it: ``base``, ``turbo``, ``sft``, ``xl-base``, ..."""
        return ("xl-" if self.is_xl else "") + self.name

    @property
    def supported_tasks(self) -> frozenset[str]:
        return TURBO_TASKS if self.is_turbo else ALL_TASKS


def detect_variant(config: dict, folder_name: str = "") -> Variant:
    """Decide the variant from ``is_turbo`` / ``model_version`` in the config, then the folder name."""
    version = str(config.get("model_version") or "").lower()
    name = folder_name.lower()
    is_turbo = bool(config.get("is_turbo")) or version == "turbo" or ("turbo" in name and not version)
    is_xl = config.get("hidden_size", 2048) > 2048 or "xl" in name
    if is_turbo:
        return Variant("turbo", True, is_xl, 8, False, True)
    if "sft" in version or "sft" in name:
        return Variant("sft", False, is_xl, 50, True, True)
    return Variant("base", False, is_xl, 50, True, False)
