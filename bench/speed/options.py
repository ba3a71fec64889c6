"""``--quantize`` and ``--vram-gib`` of ``python -m bench run``: checked, then resolved per set of networks.

``--quantize`` takes what ``ACESTEP_QUANTIZE`` takes (``int8``, ``dit=int8,text_encoder=none``,
``auto``); components left out are ``auto``, resolved as the engine resolves them for the card
being simulated. The benchmark builds no LM, so only the DiT and the text encoder are quantized.
"""

from __future__ import annotations

from acestep.memory.quantization import (
    AUTO,
    INSTALL_HINT,
    NONE,
    QuantizationPlan,
    default_mode,
    parse_setting,
    torchao_installed,
    unsupported_reason,
)

FLAG = "--quantize"


class OptionError(ValueError):
    """An option this machine cannot run; the message says why (the command exits with status 2)."""


def canonical(spec: str) -> str:
    """One spelling per meaning: ``int8_weight_only`` -> ``int8``; per component in a fixed order,
    the ``auto`` ones left out (``dit=int8``)."""
    chosen = parse_setting(spec)
    modes = set(chosen.values())
    if len(modes) == 1:
        return modes.pop()
    return ",".join(f"{component}={mode}" for component, mode in chosen.items() if mode != AUTO)


def check_quantize(spec: str, device_type: str, capability: tuple[int, int] | None) -> None:
    """Refuse, before anything is built, a mode this device or this install cannot run."""
    for component, mode in parse_setting(spec).items():
        if mode in (AUTO, NONE):
            continue
        reason = unsupported_reason(mode, device_type, capability)
        if reason is not None:
            raise OptionError(f"{FLAG} {component}={mode} refused: {reason}")
        if not torchao_installed():
            raise OptionError(f"{FLAG} {component}={mode} needs torchao, not installed: {INSTALL_HINT}")


def quantization_plan(spec: str, device_type: str, gib: float | None) -> QuantizationPlan:
    """The plan for one set of networks on a card of ``gib`` (what ``auto`` is resolved against)."""
    modes: dict[str, str] = {}
    origin: list[tuple[str, str]] = []
    for component, mode in parse_setting(spec).items():
        if mode == AUTO:
            mode = default_mode(component, device_type, gib)
            # The engine skips a default it cannot apply rather than refusing to start.
            mode = mode if mode == NONE or torchao_installed() else NONE
            where = f"{gib:g} GiB" if gib is not None else "no GPU"
            origin.append((component, f"auto ({device_type}, {where})"))
        else:
            origin.append((component, FLAG))
        modes[component] = mode
    return QuantizationPlan(**modes, origin=tuple(origin))


def quantized_modes(plan: QuantizationPlan) -> dict[str, str]:
    """The modes of the networks the benchmark builds (it has no LM), for the result JSON."""
    return {component: plan.mode(component) for component in ("dit", "text_encoder")}


def file_tag(spec: str, vram_gib: float | None) -> str:
    """The result file name's suffix: ``-int8-4gib``; empty for the unquantized, uncapped case."""
    tag = "" if spec == NONE else "-" + spec.replace("=", "-").replace(",", "_")
    return tag + ("" if vram_gib is None else f"-{vram_gib:g}gib")
