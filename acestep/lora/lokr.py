"""LoKr adapters (LyCORIS) on one loaded DiT: read and check, attach, activate with a scale,
give the weight deltas for fusing, detach with the base untouched.

A LoKr file names its modules as LyCORIS does, ``lycoris_`` + the module's path with "." as "_".
Upstream's LoKr training builds its network on the upstream decoder, so its files use upstream's
names (``lycoris_layers_0_self_attn_q_proj``, ``lycoris_proj_in_1``); a network built on
diffusers' DiT has diffusers' names (``..._to_q``, ``lycoris_proj_in_conv``). Both are resolved
against the loaded DiT's own modules, so neither is guessed from the underscores.

LyCORIS wraps a layer by replacing its ``forward``; nothing of the DiT's weights changes. The
modules are built by ``lycoris.create_lycoris_from_weights`` (their factors, dimension, alpha and
DoRA scale come from the file) and kept in a ``LycorisNetwork`` registered under the DiT, so they
move with it between devices. Activation wraps the layers with the scale as LyCORIS' multiplier;
deactivation restores the original ``forward`` exactly (outputs bit-identical to the base).
LyCORIS is an optional dependency (``acestep[train]``); without it a LoKr is refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from acestep.checkpoints.convert import upstream_key
from acestep.lora.catalog import LOKR_EXTRAS, LOKR_PARTS, LYCORIS_PREFIX, LoraError, LoraInfo

SLOT_PREFIX = "acestep_lokr_"  # the attribute holding one adapter's network on the DiT
ADAPTABLE = (torch.nn.Linear, torch.nn.Conv1d)  # what LyCORIS' LoKr wraps in this DiT


def require_lycoris() -> None:
    """``LoraError`` naming the extra to install when LyCORIS is missing."""
    try:
        import lycoris  # noqa: F401
    except ImportError:
        raise LoraError(
            "LoKr adapters need the LyCORIS library: install acestep[train] (pip install 'acestep[train]')"
        ) from None


@contextlib.contextmanager
def quiet_lycoris() -> Iterator[None]:
    """LyCORIS logs each module it builds, and where it keeps a factor whole, on its own handler."""
    log = logging.getLogger("LyCORIS")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def lycoris_name(path: str) -> str:
    """``layers.0.self_attn.to_q`` -> ``lycoris_layers_0_self_attn_to_q``."""
    return LYCORIS_PREFIX + path.replace(".", "_")


def module_names(transformer: torch.nn.Module) -> dict[str, str]:
    """LyCORIS name -> DiT module path for every layer a LoKr can adapt, under upstream's decoder
    names and under diffusers' (a layer wrapped by PEFT counts as its base layer)."""
    names: dict[str, str] = {}
    for path, module in transformer.named_modules():
        # PEFT's own layers (base_layer, lora_A...) and other LoKr networks are not DiT layers.
        if not path or ".base_layer" in path or ".lora_" in path or path.startswith(SLOT_PREFIX):
            continue
        if isinstance(getattr(module, "base_layer", module), ADAPTABLE):
            upstream = upstream_key("transformer", f"{path}.weight").removeprefix("decoder.")
            names[lycoris_name(upstream.removesuffix(".weight"))] = path
            names[lycoris_name(path)] = path
    return names


def read(info: LoraInfo, transformer: torch.nn.Module, model_tag: str) -> dict[str, torch.Tensor]:
    """The LoKr's tensors keyed by this DiT's (diffusers') LyCORIS names, each module checked to
    exist in the DiT with the sizes the adapter expects; ``LoraError`` with the reason otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    require_lycoris()
    try:
        raw = load_file(info.path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise LoraError(f"LoKr {info.name!r}: {Path(info.path).name} cannot be read ({exc})") from None
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        module, _, part = key.rpartition(".")
        if part not in LOKR_PARTS + LOKR_EXTRAS:
            raise LoraError(f"LoKr {info.name!r}: {key!r} is not a LoKr weight")
        grouped.setdefault(module, {})[part] = tensor
    names = module_names(transformer)
    state = {}
    for module, parts in sorted(grouped.items()):
        path = names.get(module)
        if path is None:
            raise LoraError(
                f"LoKr {info.name!r} adapts {module.removeprefix(LYCORIS_PREFIX)}, which this DiT "
                f"({model_tag}) does not have"
            )
        layer = transformer.get_submodule(path)
        weight = getattr(layer, "base_layer", layer).weight
        wanted = (weight.shape[0], math.prod(weight.shape[1:]))
        if _sizes(parts) != wanted:
            raise LoraError(
                f"LoKr {info.name!r} was made for another DiT: {path} is {list(wanted)} in this "
                f"{model_tag} DiT, the adapter expects {list(_sizes(parts))} (2B and XL adapters do "
                "not carry across)"
            )
        state |= {f"{lycoris_name(path)}.{part}": tensor for part, tensor in parts.items()}
    return state


def _sizes(parts: dict[str, torch.Tensor]) -> tuple[int, int]:
    """The [out, in x kernel] of the weight a LoKr module's two Kronecker factors make."""
    if "lokr_w1" in parts:
        w1 = tuple(parts["lokr_w1"].shape)
    else:
        w1 = (parts["lokr_w1_a"].shape[0], parts["lokr_w1_b"].shape[1])
    if "lokr_w2" in parts:
        w2 = (parts["lokr_w2"].shape[0], math.prod(parts["lokr_w2"].shape[1:]))
    elif "lokr_t2" in parts:  # Tucker: t2 [dim, dim, *kernel] between w2_a [dim, out] and w2_b [dim, in]
        kernel = math.prod(parts["lokr_t2"].shape[2:])
        w2 = (parts["lokr_w2_a"].shape[1], parts["lokr_w2_b"].shape[1] * kernel)
    else:
        w2 = (parts["lokr_w2_a"].shape[0], parts["lokr_w2_b"].shape[1])
    return w1[0] * w2[0], w1[1] * w2[1]


class LokrAdapter:
    """One LoKr attached to a DiT, inactive until :meth:`activate`."""

    def __init__(self, transformer: torch.nn.Module, key: str, state: dict[str, torch.Tensor]):
        from lycoris import create_lycoris_from_weights

        self.transformer = transformer
        self.slot = SLOT_PREFIX + key
        self.active = False
        with quiet_lycoris():
            network, _ = create_lycoris_from_weights(1.0, "", transformer, weights_sd=state)
        wanted = {key.rpartition(".")[0] for key in state}
        if len(network.loras) != len(wanted):
            raise LoraError(f"LyCORIS built {len(network.loras)} of the adapter's {len(wanted)} LoKr modules")
        paths = {lycoris_name(path): path for path in module_names(transformer).values()}
        self.modules = {paths[lora.lora_name]: lora for lora in network.loras}
        for lora in network.loras:
            # Registered without wrapping anything (LyCORIS' apply_to would also activate them).
            network.add_module(lora.lora_name, lora)
        weight = next(transformer.parameters())
        network.to(weight.device).eval().requires_grad_(False)
        transformer.add_module(self.slot, network)
        self.network = network

    @property
    def nbytes(self) -> int:
        tensors = list(self.network.parameters()) + list(self.network.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def activate(self, scale: float) -> None:
        """Wrap the adapted layers, the LoKr's delta times ``scale`` (LyCORIS' multiplier)."""
        self.deactivate()
        for lora in self.modules.values():
            lora.multiplier = scale
            lora.apply_to()
        self.active = True

    def deactivate(self) -> None:
        """The layers' own ``forward`` back (other LoKrs wrapping the same layer stay)."""
        if not self.active:
            return
        for lora in reversed(list(self.modules.values())):
            lora.restore()
            _drop_plain_forward(lora.org_module[0])
        self.active = False

    @torch.no_grad()
    def deltas(self, scale: float) -> Iterator[tuple[str, torch.Tensor]]:
        """(module path, float32 weight delta at ``scale``), as LyCORIS' forward adds it to the
        current (original) weight; for fusing."""
        for path, lora in self.modules.items():
            base = lora.org_module[0].weight.detach().float()
            diff = lora.get_weight(lora.shape).float() * lora.scalar.float()
            if lora.wd:  # DoRA rescales the sum, so the delta depends on the base weight
                yield path, lora.apply_weight_decompose(base + diff, scale).float() - base
            else:
                yield path, diff * scale

    def detach(self) -> None:
        """Unwrap every layer and remove the network from the DiT."""
        self.deactivate()
        if hasattr(self.transformer, self.slot):
            delattr(self.transformer, self.slot)


def _drop_plain_forward(layer: torch.nn.Module) -> None:
    """LyCORIS' restore leaves the layer's own bound ``forward`` as an instance attribute; with no
    wrapper left it is removed, so the layer is exactly as loaded (another patch is kept)."""
    forward = layer.__dict__.get("forward")
    if "_lycoris_wrappers" in layer.__dict__ or forward is None:
        return
    own = getattr(forward, "__self__", None) is layer
    if own and getattr(forward, "__func__", None) is type(layer).forward:
        del layer.__dict__["forward"]
