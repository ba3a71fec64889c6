"""LoRA adapters on one loaded DiT: load, activate with scales, fuse, unload, with the base
weights restored exactly.

Runtime (the default): diffusers' PEFT integration puts ``lora_A``/``lora_B`` beside each targeted
Linear; a set of adapters is activated with its scales; with none active the adapters are
disabled, so only the original Linear runs (bit-identical to an engine that never saw one). The
last unload removes the PEFT layers altogether, leaving plain ``nn.Linear`` modules (upstream's
unload left them attached: #320, #324).

Fused (``ACESTEP_LORA_FUSE=true``): the active set is added into the base weights once, so the DiT
runs at base speed. The original weights are kept in CPU RAM and copied back before another set
is fused; they are never recovered by subtraction (``W + dW - dW`` is not ``W`` in floating point).

LoKr adapters (LyCORIS, ``acestep/lora/lokr.py``) take part alongside: attached beside the PEFT
layers, wrapped in while active (with the scale as LyCORIS' multiplier), unwrapped while not, and
fused the same way as LoRAs (their deltas added to the originals). A set may mix both kinds.

Only safetensors are read, and diffusers never opens a file itself (it would accept pickles).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger

from acestep.lora import lokr
from acestep.lora.catalog import LoraError, LoraInfo, find
from acestep.settings import TRUE_WORDS, lora_dir
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value

PREFIX = "transformer"


def fuse_setting(env=None) -> bool:
    env = current_settings() if env is None else env
    return (env.get("ACESTEP_LORA_FUSE") or "").strip().lower() in TRUE_WORDS  # off unless switched on


def max_loaded_setting(env=None) -> int:
    env = current_settings() if env is None else env
    value = (env.get("ACESTEP_LORA_MAX_LOADED") or "").strip()
    try:
        count = int(value) if value else setting_value({}, "ACESTEP_LORA_MAX_LOADED")
    except ValueError:
        raise ValueError(f"ACESTEP_LORA_MAX_LOADED must be a whole number, got {value!r}") from None
    if count < 1:
        raise ValueError(f"ACESTEP_LORA_MAX_LOADED must be at least 1, got {count}")
    return count


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """PEFT warns about multi-adapter use and deleted active adapters: both are what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="peft")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="peft")
        yield


@dataclass
class Loaded:
    info: LoraInfo
    key: str  # the adapter's name inside PEFT ("." and spaces are not allowed there)
    nbytes: int
    seconds: float
    used: int  # order of last use (least recently used adapters are dropped first)
    lokr: lokr.LokrAdapter | None = None  # a LoKr (LyCORIS) adapter; None for a LoRA (PEFT)


class Adapters:
    """The adapters attached to ``transformer`` (a diffusers ``AceStepTransformer``).

    ``version`` changes whenever what the DiT computes may have changed (an adapter attached or
    removed, another active set): captured graphs and compiled code must be dropped then.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        model_tag: str,
        directory: str | Path | None = None,
        fuse: bool | None = None,
        max_loaded: int | None = None,
    ):
        self.transformer = transformer
        self.model_tag = model_tag
        self.directory = Path(directory) if directory is not None else None
        self.fuse = fuse_setting() if fuse is None else fuse
        self.max_loaded = max_loaded_setting() if max_loaded is None else max_loaded
        self.loaded: dict[str, Loaded] = {}
        self.active: tuple[tuple[str, float], ...] = ()
        self.version = 0
        self._originals: dict[str, torch.Tensor] = {}  # fused mode: base weights, on the CPU
        self._clock = itertools.count()
        self._keys = itertools.count()
        self._unrecorded: set[str] = set()
        # Status is read from server threads while the worker thread changes the adapters.
        self._lock = threading.RLock()

    @property
    def folder(self) -> Path:
        return self.directory if self.directory is not None else lora_dir()

    # -- checks and loading -------------------------------------------------------------

    def check(self, selection: tuple[tuple[str, float], ...]) -> list[LoraInfo]:
        """The catalog entries of ``selection``; ``LoraError`` when one is missing, unusable or
        made for another DiT. Reads headers only."""
        names = [name for name, _ in selection]
        infos = find(self.folder, names, self.model_tag)
        for info in infos:
            if info.base_variant is None and info.name not in self._unrecorded:
                self._unrecorded.add(info.name)  # said once, not on every job
                logger.warning(f"LoRA {info.name!r} does not record its base model; used on {self.model_tag}")
        return infos

    @_quiet()
    def load(self, names: list[str]) -> list[str]:
        """Load adapters (not activating them); returns those that were not loaded yet. Each file
        is read and checked against the DiT before another adapter makes room for it."""
        missing = [name for name in names if name not in self.loaded]
        # Adapters already in the DiT need no catalog scan: a job naming them pays nothing here.
        infos = self.check(tuple((name, 1.0) for name in missing)) if missing else []
        new = []
        with self._lock:
            for name in names:
                if name in self.loaded:
                    self._touch(name)
            for info in infos:
                state = self._read(info)
                self._make_room(keep=set(names))
                self._attach(info, state)
                new.append(info.name)
        return new

    def _read(self, info: LoraInfo) -> dict[str, torch.Tensor]:
        """The adapter's weights with diffusers' keys, checked against this DiT's layers."""
        if info.format == "lokr":
            return lokr.read(info, self.transformer, self.model_tag)
        from diffusers.loaders.lora_pipeline import AceStepLoraLoaderMixin
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(info.path, device="cpu")
        except (SafetensorError, OSError) as exc:
            raise LoraError(f"LoRA {info.name!r}: {Path(info.path).name} cannot be read ({exc})") from None
        state = AceStepLoraLoaderMixin.lora_state_dict(raw)
        state = state[0] if isinstance(state, tuple) else state
        self._check_shapes(info, state)
        return state

    def _attach(self, info: LoraInfo, state: dict[str, torch.Tensor]) -> None:
        started = time.perf_counter()
        key = f"adapter{next(self._keys)}"
        if info.format == "lokr":
            self._attach_lokr(info, state, key, started)
            return
        metadata = {
            f"{PREFIX}.r": info.rank,
            f"{PREFIX}.lora_alpha": info.alpha,
            f"{PREFIX}.target_modules": sorted({_module_of(k) for k in state}),
        }
        self._unfuse()  # PEFT wraps the base Linear: it must hold the original weights
        self.version += 1
        try:
            self.transformer.load_lora_adapter(state, adapter_name=key, prefix=PREFIX, metadata=metadata)
        except Exception as exc:  # a partly attached adapter must not stay behind
            self._drop(key)
            if not self._peft_loaded():
                self.transformer.unload_lora()
            self._activate(self.active)
            raise LoraError(f"LoRA {info.name!r} could not be attached to this DiT: {exc}") from None
        params = [p for n, p in self.transformer.named_parameters() if f".{key}." in n and "lora_" in n]
        nbytes = sum(p.numel() * p.element_size() for p in params)
        seconds = round(time.perf_counter() - started, 4)
        self.loaded[info.name] = Loaded(info, key, nbytes, seconds, next(self._clock))
        self._activate(self.active)  # loading makes PEFT activate the new adapter; undo that
        logger.info(f"LoRA {info.name!r} loaded ({info.format}, rank {info.rank}, {nbytes / 2**20:.1f} MiB)")

    def _attach_lokr(self, info: LoraInfo, state: dict[str, torch.Tensor], key: str, started: float) -> None:
        self._unfuse()  # built on the original weights (DoRA reads them)
        self.version += 1
        try:
            adapter = lokr.LokrAdapter(self.transformer, key, state)
        except LoraError:
            self._activate(self.active)
            raise
        except Exception as exc:  # LyCORIS raises several types for factors that do not fit
            self._activate(self.active)
            raise LoraError(f"LoKr {info.name!r} could not be attached to this DiT: {exc}") from None
        seconds = round(time.perf_counter() - started, 4)
        self.loaded[info.name] = Loaded(info, key, adapter.nbytes, seconds, next(self._clock), adapter)
        self._activate(self.active)
        logger.info(f"LoKr {info.name!r} loaded (dim {info.rank}, {adapter.nbytes / 2**20:.1f} MiB)")

    def _peft_loaded(self) -> bool:
        return any(entry.lokr is None for entry in self.loaded.values())

    def _check_shapes(self, info: LoraInfo, state: dict[str, torch.Tensor]) -> None:
        """Every key names a Linear of this DiT with matching sizes: a clear error before PEFT."""
        modules = dict(self.transformer.named_modules())
        for key, tensor in state.items():
            path = _module_of(key)
            module = modules.get(f"{path}.base_layer", modules.get(path))  # wrapped by PEFT already?
            if not isinstance(module, torch.nn.Linear):
                raise LoraError(
                    f"LoRA {info.name!r} adapts {path}, which this DiT ({self.model_tag}) does not have"
                )
            wanted = module.in_features if ".lora_A." in key else module.out_features
            size = tensor.shape[1] if ".lora_A." in key else tensor.shape[0]
            if size != wanted:
                raise LoraError(
                    f"LoRA {info.name!r} was made for another DiT: {path} has {wanted} features in "
                    f"this {self.model_tag} DiT, the adapter expects {size} (2B and XL adapters do not "
                    "carry across)"
                )

    def _make_room(self, keep: set[str]) -> None:
        while len(self.loaded) >= self.max_loaded:
            active = {name for name, _ in self.active}
            spare = [n for n in self.loaded if n not in keep and n not in active]
            if not spare:
                raise LoraError(
                    f"{len(self.loaded)} LoRA adapters are loaded and in use (ACESTEP_LORA_MAX_LOADED="
                    f"{self.max_loaded}); unload one first"
                )
            oldest = min(spare, key=lambda n: self.loaded[n].used)
            self.unload([oldest])

    def _touch(self, name: str) -> None:
        self.loaded[name].used = next(self._clock)

    # -- activation -----------------------------------------------------------------------

    @_quiet()
    def apply(self, selection: tuple[tuple[str, float], ...]) -> bool:
        """Make ``selection`` the active set (loading what is missing); True when the active set
        changed. Adapters at scale 0 take no part: the output equals no adapter."""
        wanted = tuple((name, float(scale)) for name, scale in selection if scale != 0.0)
        with self._lock:
            self.load([name for name, _ in selection])  # also marks them used
            if wanted == self.active:
                return False
            self._activate(wanted)
            return True

    def _activate(self, wanted: tuple[tuple[str, float], ...]) -> None:
        """Enable exactly ``wanted``; on any failure, no adapter is active and nothing is fused."""
        self.version += 1
        try:
            self._unfuse()
            self._deactivate_lokrs()
            if not self.loaded:
                self.active = ()
                return
            loras = [(self.loaded[n].key, s) for n, s in wanted if self.loaded[n].lokr is None]
            lokrs = [(self.loaded[n].lokr, s) for n, s in wanted if self.loaded[n].lokr is not None]
            if self._peft_loaded() and not loras:
                self.transformer.disable_adapters()
            elif loras:
                self.transformer.enable_adapters()
                self.transformer.set_adapters([key for key, _ in loras], [scale for _, scale in loras])
            if self.fuse and wanted:
                self._fuse([key for key, _ in loras], lokrs)
                if loras:
                    self.transformer.disable_adapters()  # the fused weights carry them now
            else:
                for adapter, scale in lokrs:
                    adapter.activate(scale)
            self.active = wanted
        except BaseException:
            self.active = ()
            self._unfuse()
            self._deactivate_lokrs()
            if self._peft_loaded():
                self.transformer.disable_adapters()
            raise

    def _deactivate_lokrs(self) -> None:
        for entry in reversed(list(self.loaded.values())):
            if entry.lokr is not None:
                entry.lokr.deactivate()

    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        for name, module in self.transformer.named_modules():
            if isinstance(module, LoraLayer):
                yield name, module

    @torch.no_grad()
    def _fuse(self, keys: list[str], lokrs: list[tuple[lokr.LokrAdapter, float]]) -> None:
        """Add the active adapters into the base weights (in float32), keeping the originals."""
        deltas: dict[str, torch.Tensor] = {}
        for path, layer in self._lora_layers():
            for key in (key for key in keys if key in layer.lora_A):
                down, up = layer.lora_A[key].weight.float(), layer.lora_B[key].weight.float()
                deltas[path] = deltas.get(path, 0) + (up @ down) * layer.scaling[key]
        for adapter, scale in lokrs:  # deltas of the original weights: taken before any is written
            for path, delta in adapter.deltas(scale):
                deltas[path] = deltas.get(path, 0) + delta
        for path, delta in deltas.items():
            weight = self._base_weight(path)
            original = self._originals.setdefault(path, weight.detach().to("cpu", copy=True))
            weight.copy_((original.to(weight.device).float() + delta.reshape(weight.shape)).to(weight.dtype))

    def _base_weight(self, path: str) -> torch.nn.Parameter:
        layer = self.transformer.get_submodule(path)
        return getattr(layer, "base_layer", layer).weight  # under PEFT's wrapper, if any

    @torch.no_grad()
    def _unfuse(self) -> bool:
        """Copy the original base weights back (bit-exact); True when something was fused."""
        if not self._originals:
            return False
        for path, original in self._originals.items():
            self._base_weight(path).copy_(original)
        self._originals.clear()
        return True

    # -- unloading ----------------------------------------------------------------------

    @_quiet()
    def unload(self, names: list[str] | None = None) -> list[str]:
        """Remove adapters (all by default) from the DiT; returns those removed. With none left,
        the PEFT layers go too and the DiT is exactly as loaded from disk."""
        with self._lock:
            targets = list(self.loaded) if names is None else [n for n in names if n in self.loaded]
            if not targets:
                return []
            self._unfuse()
            self.version += 1
            remaining = tuple((n, s) for n, s in self.active if n not in targets)
            had_peft = self._peft_loaded()
            for name in targets:
                entry = self.loaded.pop(name)
                if entry.lokr is not None:
                    entry.lokr.detach()
                else:
                    self._drop(entry.key)
            if had_peft and not self._peft_loaded():
                self.transformer.unload_lora()  # plain nn.Linear modules again
            if self.loaded:
                self._activate(remaining)
            else:
                self.active = ()
        logger.info(f"LoRA unloaded: {', '.join(targets)}")
        return targets

    def _drop(self, key: str) -> None:
        try:
            self.transformer.delete_adapters(key)
        except (ValueError, AttributeError, KeyError):  # never attached (a failed load)
            pass

    # -- reports --------------------------------------------------------------------------

    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self.loaded.values()) + sum(
                t.numel() * t.element_size() for t in self._originals.values()
            )

    def status(self) -> dict:
        with self._lock:
            return {
                "loaded": [
                    entry.info.as_dict() | {"bytes": entry.nbytes, "load_seconds": entry.seconds}
                    for entry in self.loaded.values()
                ],
                "active": [{"name": name, "scale": scale} for name, scale in self.active],
                "bytes": self.nbytes(),
                "fused": self.fuse and bool(self._originals),
                "fuse": self.fuse,
                "max_loaded": self.max_loaded,
            }


def _module_of(key: str) -> str:
    """``transformer.layers.0.attn.to_q.lora_A.weight`` -> ``layers.0.attn.to_q``."""
    path = key.removeprefix(f"{PREFIX}.")
    for part in (".lora_A.", ".lora_B."):
        if part in path:
            return path.split(part)[0]
    return path
