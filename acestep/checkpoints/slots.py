"""The models a server serves: up to three slots and the DiT folders of its checkpoints root.

Slots follow upstream's ``ACESTEP_CONFIG_PATH``, ``..._PATH2`` and ``..._PATH3``; a model's name is
the basename of its path (``/x/acestep-v15-base/`` -> ``acestep-v15-base``). A server serves the
slots' models and every DiT folder under its checkpoints root (``acestep-v15-*``, never an LM
folder), each loaded on demand by the worker (docs/api.md "Model slots"). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from acestep.checkpoints.layout import CheckpointError, CheckpointPaths, list_dits, read_json, resolve
from acestep.checkpoints.variants import Variant, detect_variant
from acestep.errors import shown

SLOTS = (1, 2, 3)
SLOT_SETTINGS = {1: "ACESTEP_CONFIG_PATH", 2: "ACESTEP_CONFIG_PATH2", 3: "ACESTEP_CONFIG_PATH3"}


class UnknownModel(ValueError):
    """A request names a model this server does not serve; the message lists those it does."""

    def __init__(self, name: str, served: list[str]):
        listed = ", ".join(served) or "none"
        super().__init__(f"model {shown(name)} is not served here; served models: {listed}")
        self.name, self.served = name, served


class SlotNotDeclared(ValueError):
    """``/v1/init`` named a slot whose setting was blank at start."""

    def __init__(self, slot: int):
        super().__init__(
            f"Slot {slot} is not available because {SLOT_SETTINGS[slot]} was not set at startup. "
            f"Restart the API with {SLOT_SETTINGS[slot]} to enable this slot."
        )


def model_name(path: str | Path | None) -> str:
    """The model name of a DiT path: its basename ("" for none)."""
    text = str(path or "").strip().rstrip("/\\")
    return text.replace("\\", "/").rsplit("/", 1)[-1] if text else ""


@dataclass(frozen=True)
class ModelSlots:
    """Slot 1 (the default model) is always declared; slots 2 and 3 may be empty (None)."""

    primary: CheckpointPaths
    names: tuple[str | None, str | None, str | None]

    @classmethod
    def build(
        cls, primary: CheckpointPaths, second: str | None = None, third: str | None = None
    ) -> ModelSlots:
        """Slots 2 and 3 must be DiT folders under the primary's root: a wrong one fails at start."""
        slots = cls(primary, (primary.dit_name, None, None))
        for slot, path in ((2, second), (3, third)):
            name = model_name(path)
            if name:
                slots = slots.assign(slot, name)
        return slots

    @property
    def default(self) -> str:
        return self.names[0] or self.primary.dit_name

    def declared(self, slot: int) -> bool:
        return slot in SLOTS and self.names[slot - 1] is not None

    def served(self) -> list[str]:
        """Every model a request may name, sorted: the slots' and the root's complete DiT folders
        (a half-downloaded one is not served, so it is refused as unknown, never a failed load)."""
        root = self.primary.root
        found = (
            {n for n in list_dits(root) if _complete(root, n)} if self.primary.layout == "upstream" else set()
        )
        return sorted(found | {name for name in self.names if name})

    def require(self, name: str | None) -> str:
        """The model a request runs on: ``name`` when served, the default when none is named;
        :class:`UnknownModel` otherwise (never a silent fallback)."""
        name = model_name(name)
        if not name:
            return self.default
        served = self.served()
        if name not in served:
            raise UnknownModel(name, served)
        return name

    def paths(self, name: str) -> CheckpointPaths:
        """The resolved folders of a served model (its variant decides the tasks it runs)."""
        name = self.require(name)
        if name == self.primary.dit_name:
            return self.primary
        return resolve(self.primary.root, name)

    def assign(self, slot: int, name: str) -> ModelSlots:
        """These slots with ``slot`` holding ``name`` (checked: a DiT folder this server has)."""
        if slot not in SLOTS:
            raise SlotNotDeclared(slot)
        if name in list_dits(self.primary.root) and name not in self.served():
            resolve(self.primary.root, name)  # an incomplete folder: a CheckpointError says what is missing
        name = self.require(name)  # UnknownModel for a name with no folder at all
        if slot == 1 and name != self.primary.dit_name:
            primary = resolve(self.primary.root, name)
        else:
            primary = self.primary
            if name != primary.dit_name:
                resolve(primary.root, name)  # a CheckpointError says what is missing
        names = list(self.names)
        names[slot - 1] = name
        return replace(self, primary=primary, names=(names[0], names[1], names[2]))

    def slot_of(self, name: str) -> int | None:
        return next((slot for slot in SLOTS if self.names[slot - 1] == name), None)


def variant_of(root: Path, name: str) -> Variant:
    """A DiT folder's variant, from its config.json; a missing or unreadable config reads as the
    folder name says (base unless it says turbo), as upstream does."""
    try:
        config = read_json(root / name / "config.json")
    except CheckpointError:
        config = {}
    return detect_variant(config, name)


def _complete(root: Path, name: str) -> bool:
    try:
        resolve(root, name)
    except CheckpointError:
        return False
    return True


def describe(root: Path, name: str) -> tuple[str, list[str]]:
    """A DiT folder's variant name and the tasks it runs (sorted)."""
    variant = variant_of(root, name)
    return variant.name, sorted(variant.supported_tasks)


__all__ = [
    "SLOTS",
    "SLOT_SETTINGS",
    "ModelSlots",
    "SlotNotDeclared",
    "UnknownModel",
    "describe",
    "model_name",
    "variant_of",
]
