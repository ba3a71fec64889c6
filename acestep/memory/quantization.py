"""Weight quantization policy: which mode each network's linear layers are stored in, per card.

Torch-free, so a server decides (and refuses) before its worker loads anything; the engine applies
the plan with torchao (``acestep/engine/quantize.py``).

Modes (upstream ACE-Step's names are accepted as aliases):

- ``none``: the weights as the precision plan stores them;
- ``int8`` (upstream ``int8_weight_only``): int8 weights with a per-channel scale, computed in the
  precision plan's dtype; any CUDA card and the CPU;
- ``fp8`` (upstream ``fp8_weight_only``): float8 weights; CUDA from compute capability 8.9;
- ``w8a8`` (upstream ``w8a8_dynamic``): int8 weights and dynamically quantized int8 activations;
  allowed here from compute capability 8.9 only, like fp8 (upstream also picks it for cards below
  7.0; not measured here, so not offered there).

Components: ``dit`` (the diffusion transformer), ``text_encoder`` (the caption/lyric embedder)
and ``lm`` (the 5 Hz LM). The default, as upstream's GPU tiers decide it: int8 for the DiT on
every CUDA card below 20 GiB (upstream tiers 1 to 6a), none above it, none on the CPU and MPS
(there is no VRAM to save); the text encoder and the LM are quantized only when asked.

Setting ``ACESTEP_QUANTIZE`` (upstream's ``ACESTEP_QUANTIZATION`` is read when it is unset):
``auto`` (default), one mode for every component (``int8``), or per component
(``dit=int8,text_encoder=none,lm=int8``; components left out keep their default).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass

from acestep.settings import current as current_settings

NONE, INT8, FP8, W8A8 = "none", "int8", "fp8", "w8a8"
MODES = (NONE, INT8, FP8, W8A8)
ALIASES = {
    "int8_weight_only": INT8,
    "fp8_weight_only": FP8,
    "w8a8_dynamic": W8A8,
    "off": NONE,
    "false": NONE,
    "0": NONE,
}
COMPONENTS = ("dit", "text_encoder", "lm")
AUTO = "auto"

# Float8 tensor cores (and torchao's float8 kernels) start at Ada/Hopper: compute capability 8.9.
FLOAT8_CAPABILITY = (8, 9)
NEEDS_FLOAT8_CARD = (FP8, W8A8)
# Upstream's GPU tiers turn INT8 on for the DiT below 20 GB (tier1 to tier6a) and off above.
QUANTIZE_DIT_BELOW_GIB = 20.0
INSTALL_HINT = 'pip install "acestep[quant]"'


class QuantizationError(ValueError):
    """A quantization mode that this card, this machine or this install cannot run (a start error)."""


@dataclass(frozen=True)
class QuantizationPlan:
    """The mode per component and, per component, where it came from (``auto: ...`` or the setting)."""

    dit: str = NONE
    text_encoder: str = NONE
    lm: str = NONE
    origin: tuple[tuple[str, str], ...] = ()

    def mode(self, component: str) -> str:
        return getattr(self, component)

    @property
    def active(self) -> bool:
        return any(self.mode(c) != NONE for c in COMPONENTS)

    def as_dict(self) -> dict:
        return {c: self.mode(c) for c in COMPONENTS} | {"origin": dict(self.origin)}


def canonical_mode(text: str) -> str:
    """``int8_weight_only`` -> ``int8``; ``auto`` stays; anything else unknown is a ValueError."""
    name = text.strip().lower()
    name = ALIASES.get(name, name)
    if name not in (*MODES, AUTO):
        raise QuantizationError(
            f"ACESTEP_QUANTIZE: unknown mode {text!r}; one of auto, {', '.join(MODES)} "
            f"(or upstream's {', '.join(k for k in ALIASES if '_' in k)})"
        )
    return name


def parse_setting(text: str | None) -> dict[str, str]:
    """The setting's text as a mode (or ``auto``) per component."""
    text = (text or "").strip()
    if not text:
        return dict.fromkeys(COMPONENTS, AUTO)
    if "=" not in text:
        return dict.fromkeys(COMPONENTS, canonical_mode(text))
    chosen = dict.fromkeys(COMPONENTS, AUTO)
    for part in filter(None, (p.strip() for p in text.split(","))):
        component, _, mode = part.partition("=")
        component = component.strip().lower().replace("-", "_")
        if component not in COMPONENTS or not mode.strip():
            raise QuantizationError(
                f"ACESTEP_QUANTIZE: {part!r} is not component=mode; components: {', '.join(COMPONENTS)}"
            )
        chosen[component] = canonical_mode(mode)
    return chosen


def default_mode(component: str, device_type: str, gib: float | None) -> str:
    """Upstream's per-tier default: int8 for the DiT on CUDA below 20 GiB, else none."""
    if component == "dit" and device_type == "cuda" and gib is not None and gib < QUANTIZE_DIT_BELOW_GIB:
        return INT8
    return NONE


def unsupported_reason(mode: str, device_type: str, capability: tuple[int, int] | None) -> str | None:
    """Why ``mode`` cannot run on this device (None: it can)."""
    if mode == NONE:
        return None
    if device_type == "mps":
        return "torchao's quantized kernels do not run on Apple MPS"
    if mode in NEEDS_FLOAT8_CARD:
        if device_type != "cuda":
            return f"{mode} needs a CUDA card of compute capability 8.9 or newer, not the {device_type}"
        if capability is None or tuple(capability) < FLOAT8_CAPABILITY:
            shown = ".".join(map(str, capability)) if capability else "unknown"
            return f"{mode} needs compute capability 8.9 or newer (float8 kernels); this card has {shown}"
    return None


def plan_quantization(
    device_type: str,
    gib: float | None,
    capability: tuple[int, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> QuantizationPlan:
    """The plan for a device (``gib``: the memory its tier was looked up from, ``MAX_CUDA_VRAM``
    included). A mode asked for that this card cannot run is a :class:`QuantizationError`."""
    env = current_settings() if env is None else env
    raw = env.get("ACESTEP_QUANTIZE") or env.get("ACESTEP_QUANTIZATION")
    source = "ACESTEP_QUANTIZE" if env.get("ACESTEP_QUANTIZE") else "ACESTEP_QUANTIZATION"
    chosen = parse_setting(raw)
    modes: dict[str, str] = {}
    origin: list[tuple[str, str]] = []
    where = f"{gib:g} GiB" if gib is not None else "no GPU"
    for component in COMPONENTS:
        mode = chosen[component]
        if mode == AUTO:
            mode = default_mode(component, device_type, gib)
            note = f"auto ({device_type}, {where})"
            if mode != NONE and not torchao_installed():  # a default never stops a start
                mode, note = NONE, f"{note}; {INT8} skipped, torchao not installed: {INSTALL_HINT}"
            modes[component] = mode
            origin.append((component, note))
            continue
        reason = unsupported_reason(mode, device_type, capability)
        if reason is not None:
            raise QuantizationError(f"{source}: {component}={mode} refused: {reason}; use int8 or none")
        modes[component] = mode
        origin.append((component, source))
    return QuantizationPlan(**modes, origin=tuple(origin))


def torchao_installed() -> bool:
    return importlib.util.find_spec("torchao") is not None


def validate_settings(env: Mapping[str, str]) -> None:
    """A malformed ``ACESTEP_QUANTIZE`` as a start-up error (the card is checked by the plan)."""
    parse_setting(env.get("ACESTEP_QUANTIZE") or env.get("ACESTEP_QUANTIZATION"))
