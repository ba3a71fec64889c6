"""An on-disk cache of quantized weights, so a reload (after ``free``) skips torchao's quantization.

One entry per network: a safetensors file holding only the quantized linear weights (torchao
tensor subclasses flattened by torchao's own ``flatten_tensor_state_dict``: ``qdata``, ``scale``
and ``zero_point`` as plain tensors, their attributes as JSON metadata). The rest of the network
still comes from the checkpoint, as before.

Key: the network's source folder (resolved path, and the name, size and mtime_ns of its weight and
config files), the component, the mode, the float dtype of the weights being quantized, the torchao
config object, and the torchao and torch versions. Any change misses, and the new entry replaces
the old one of the same folder and component. The setting ``ACESTEP_QUANTIZE_CACHE`` names the
folder (see :func:`cache_folder`).

The cache never stops a load: a failed write (read-only folder, disk full) is a warning, and an
unreadable or mismatching entry is a warning, then quantized afresh and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger

from acestep import settings
from acestep.checkpoints import CheckpointPaths

SETTING = "ACESTEP_QUANTIZE_CACHE"
OFF_WORDS = frozenset({"off", "none", "no", "false", "0"})
FORMAT = 1  # bumped when what an entry holds changes
_UNSAVABLE_TOLD: set[str] = set()  # layouts already logged as not cacheable (said once a process)
META_KEY = "acestep_quant_cache"  # our key in the file's metadata, beside torchao's
SOURCE_SUFFIXES = (".safetensors", ".json")  # weights, shard indexes, configs


def cache_folder(env: Mapping[str, str] | None = None) -> Path | None:
    """``ACESTEP_QUANTIZE_CACHE``: unset or blank = ``<ACESTEP_CACHE_DIR or $XDG_CACHE_HOME or
    ~/.cache>/acestep/quantized``; ``off``/``none``/``no``/``false``/``0`` = no cache; else a folder."""
    env = settings.current() if env is None else env
    text = (env.get(SETTING) or "").strip()
    if not text:
        return settings.cache_dir(env) / "quantized"
    if text.lower() in OFF_WORDS:
        return None
    return Path(text).expanduser()


def source_folders(paths: CheckpointPaths) -> dict[str, Path]:
    """The folder whose files each quantized network is read from (what its entry is keyed on)."""
    dit = paths.dit_dir if paths.layout == "upstream" else paths.root / "transformer"
    return {"dit": dit, "text_encoder": paths.text_encoder_dir}


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def folder_identity(folder: Path) -> dict:
    """The folder's resolved path and each weight/config file's size and mtime_ns: a changed,
    replaced or re-downloaded checkpoint changes it (stat only: hashing gigabytes would cost more
    than the quantization saved)."""
    folder = folder.resolve()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(SOURCE_SUFFIXES))
    return {
        "folder": str(folder),
        "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }


@dataclass(frozen=True)
class CacheEntry:
    """Where one network's quantized weights are cached, and the key they must match."""

    path: Path
    key: dict

    @property
    def digest(self) -> str:
        return _digest(self.key)

    def restore(self, module: torch.nn.Module, linears: list[str]) -> bool:
        """Put the entry's quantized weights into ``linears`` of ``module`` (their float weights
        replaced); False (and ``module`` untouched) when there is no usable entry."""
        if not self.path.is_file():
            return False
        try:
            weights = self._read()
        except Exception as exc:  # safetensors, JSON or torchao errors: the entry is unusable
            logger.warning(f"quantized cache entry {self.path} ignored (unreadable: {exc}); quantizing again")
            return False
        problem = _mismatch(module, linears, weights)
        if problem:
            logger.warning(f"quantized cache entry {self.path} ignored ({problem}); quantizing again")
            return False
        for name in linears:
            owner = module.get_submodule(name)
            owner.weight = torch.nn.Parameter(weights[f"{name}.weight"], requires_grad=False)
        return True

    def _read(self) -> dict[str, torch.Tensor]:
        from safetensors import safe_open
        from safetensors.torch import load_file
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

        with safe_open(str(self.path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        if json.loads(metadata.pop(META_KEY, "{}")).get("digest") != self.digest:
            raise ValueError("its key differs")
        weights, leftover = unflatten_tensor_state_dict(load_file(str(self.path)), metadata)
        if leftover:
            raise ValueError(f"{len(leftover)} tensors belong to no weight")
        return weights

    def store(self, module: torch.nn.Module, linears: list[str]) -> None:
        """Write ``linears``' quantized weights atomically (temp file, then rename) and remove the
        entries this one replaces; a failure is a warning, never an error."""
        from safetensors.torch import save_file
        from torchao.prototype.safetensors.safetensors_support import (
            ALLOWED_TENSORS_SUBCLASSES,
            flatten_tensor_state_dict,
        )

        weights = {f"{name}.weight": module.get_submodule(name).weight for name in linears}
        layouts = {type(weight).__name__ for weight in weights.values()} - set(ALLOWED_TENSORS_SUBCLASSES)
        if layouts:  # older torchao (0.15: int8 as AffineQuantizedTensor) cannot save its layout
            if not layouts <= _UNSAVABLE_TOLD:
                _UNSAVABLE_TOLD.update(layouts)
                logger.info(f"quantized weights not cached: torchao cannot save {', '.join(sorted(layouts))}")
            return
        tmp = None
        try:
            tensors, metadata = flatten_tensor_state_dict(weights)
            metadata[META_KEY] = json.dumps({"digest": self.digest, **self.key})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            save_file(tensors, str(tmp), metadata=metadata)
            # safetensors writes 0600; the users of one machine may share the cache (public weights).
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
            tmp = None
        except Exception as exc:  # read-only folder, disk full, a tensor torchao cannot flatten
            logger.warning(f"quantized weights not cached at {self.path}: {exc}")
            return
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        # The same network's older entries (other key hashes): a changed checkpoint, mode or version.
        same_network = self.path.name.rsplit(".", 2)[0] + "."
        for stale in self.path.parent.glob("*.safetensors"):
            if stale.name.startswith(same_network) and stale != self.path:
                try:
                    stale.unlink(missing_ok=True)
                    logger.info(f"removed the replaced quantized cache entry {stale}")
                except OSError as exc:  # another user's file in a shared folder
                    logger.warning(f"could not remove the replaced quantized cache entry {stale}: {exc}")


def _mismatch(module: torch.nn.Module, linears: list[str], weights: dict[str, torch.Tensor]) -> str | None:
    """Why ``weights`` cannot stand in for ``linears``' weights (None: they can)."""
    wanted = {f"{name}.weight" for name in linears}
    if set(weights) != wanted:
        return f"it holds {len(weights)} weights, the network quantizes {len(wanted)}"
    for name in linears:
        current, cached = module.get_submodule(name).weight, weights[f"{name}.weight"]
        if cached.shape != current.shape or cached.dtype != current.dtype:
            found, expected = (f"{tuple(t.shape)} {t.dtype}" for t in (cached, current))
            return f"{name}: {found}, expected {expected}"
    return None


def entry_for(
    folder: Path | None, source: Path, component: str, mode: str, dtype: str, config: object
) -> CacheEntry | None:
    """The entry of ``component`` read from ``source``, quantized with ``mode`` (torchao ``config``)
    from weights in ``dtype``; None when the cache is off or the source cannot be read."""
    if folder is None:
        return None
    import torchao

    try:
        identity = folder_identity(source)
    except OSError as exc:
        logger.warning(f"quantized cache skipped for the {component}: {exc}")
        return None
    key = {
        "format": FORMAT,
        "source": identity,
        "component": component,
        "mode": mode,
        "dtype": dtype,
        "config": repr(config),
        "torchao": torchao.__version__,
        "torch": torch.__version__,
    }
    # <parent>-<folder>.<component>.<folder hash>: one model's network; then the key's own hash.
    source = Path(identity["folder"])
    stem = f"{source.parent.name}-{source.name}.{component}.{_digest(identity['folder'])[:12]}"
    return CacheEntry(folder / f"{stem}.{_digest(key)[:16]}.safetensors", key)
