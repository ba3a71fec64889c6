"""Writing trained adapters where the LoRA catalog finds them (what the trainer calls).

Layout, for an adapter called ``<name>`` written to ``out = <lora dir>/<name>``:

- LoRA, diffusers' format: ``<name>/pytorch_lora_weights.safetensors`` (keys ``transformer.``
  + diffusers' module path, the LoRA config as JSON under ``lora_adapter_metadata``), listed as
  ``<name>``;
- LoRA, upstream's PEFT format: ``<name>-peft/adapter_config.json`` + ``adapter_model.safetensors``
  (keys ``base_model.model.`` + upstream's module path, ``q_proj``...), listed as ``<name>-peft``;
- LoKr: ``<name>/lokr_weights.safetensors``, as upstream's LoKr training writes it (LyCORIS keys
  with upstream's module names, ``algo``/``format`` and upstream's ``lokr_config`` in the header),
  listed as ``<name>``.

The catalog reads one adapter per entry of the folder, so each format gets its own folder and
both LoRA formats appear under predictable names. Every file records the DiT it was trained on
(``acestep_base_variant``). Each folder is written under a hidden temporary name beside it (the
catalog skips names starting with ".") and renamed into place; an existing folder is replaced
only when it holds nothing but this writer's files (an earlier save of the same adapter), so a
mistaken ``out`` never deletes anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from acestep.checkpoints.convert import ATTENTION_RENAMES, TRANSFORMER_RENAMES, upstream_key
from acestep.lora.catalog import (
    DIFFUSERS_WEIGHTS,
    LOKR_CONFIG_KEY,
    LOKR_DEFAULTS,
    LOKR_EXTRAS,
    LOKR_PARTS,
    LOKR_WEIGHTS,
    LYCORIS_PREFIX,
    METADATA_KEY,
    PEFT_CONFIG,
    PEFT_SUFFIX,
    PEFT_WEIGHTS,
    VARIANT_KEY,
    lokr_kind,
)

LORA_FORMATS = ("diffusers", "peft")


def write_lora(
    out: Path,
    state: dict[str, torch.Tensor],
    rank: int,
    alpha: float,
    base_variant: str,
    targets: list[str],
    formats: tuple[str, ...] = LORA_FORMATS,
) -> dict[str, Path]:
    """Write a LoRA in ``formats``; returns each format's adapter folder.

    ``state`` has diffusers' keys relative to the DiT (``layers.0.self_attn.to_q.lora_A.weight``:
    what ``peft.get_peft_model_state_dict(transformer, adapter_name=...)`` gives); ``targets`` are
    diffusers' module kinds (``to_q``, ``to_out.0``...).
    """
    out = Path(out)
    unknown = set(formats) - set(LORA_FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be among {', '.join(LORA_FORMATS)}, got {list(formats)}")
    _check_variant(base_variant)
    _check_lora_state(state, rank, targets)
    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in sorted(state.items())}
    written = {}
    if "diffusers" in formats:
        config = {"transformer.r": rank, "transformer.lora_alpha": float(alpha)}
        config["transformer.target_modules"] = sorted(targets)
        header = {"format": "pt", VARIANT_KEY: base_variant, METADATA_KEY: json.dumps(config, sort_keys=True)}
        prefixed = {f"transformer.{key}": tensor for key, tensor in tensors.items()}
        written["diffusers"] = _publish(
            out,
            {DIFFUSERS_WEIGHTS},
            lambda folder: save_file(prefixed, str(folder / DIFFUSERS_WEIGHTS), header),
        )
    if "peft" in formats:
        folder = out.with_name(out.name + PEFT_SUFFIX)
        written["peft"] = _publish(
            folder,
            {PEFT_CONFIG, PEFT_WEIGHTS},
            lambda f: _write_peft(f, tensors, rank, alpha, base_variant, targets),
        )
    return written


def _write_peft(
    folder: Path, tensors: dict, rank: int, alpha: float, base_variant: str, targets: list
) -> None:
    """Upstream's adapter folder, as ``PeftModel.save_pretrained`` on its decoder writes it."""
    from peft import LoraConfig

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=sorted(upstream_kind(target) for target in targets),
        task_type="FEATURE_EXTRACTION",  # what upstream's trainer sets for the DiT
        base_model_name_or_path=f"checkpoints/acestep-v15-{base_variant}",
    )
    config.save_pretrained(str(folder))
    keys = {f"base_model.model.{upstream_key('transformer', k).removeprefix('decoder.')}": k for k in tensors}
    save_file(
        {new: tensors[old] for new, old in keys.items()},
        str(folder / PEFT_WEIGHTS),
        {VARIANT_KEY: base_variant},
    )


def _check_lora_state(state: dict[str, torch.Tensor], rank: int, targets: list[str]) -> None:
    """Pairs of lora_A [rank, in] and lora_B [out, rank] on modules of the ``targets`` kinds."""
    if not state:
        raise ValueError("the LoRA state is empty")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for part in ("A", "B"):
            suffix = f".lora_{part}.weight"
            if key.endswith(suffix) and not key.startswith("transformer."):
                pairs.setdefault(key.removesuffix(suffix), {})[part] = tensor
                break
        else:
            raise ValueError(
                f"{key!r} is not a LoRA key relative to the DiT (layers.N.<attn>.to_q.lora_A.weight)"
            )
    for module, parts in sorted(pairs.items()):
        a, b = parts.get("A"), parts.get("B")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise ValueError(f"{module} needs a lora_A [{rank}, in] and a lora_B [out, {rank}] (rank {rank})")
        kind = ".".join(module.split(".")[-2:]) if module.endswith(".0") else module.rsplit(".", 1)[-1]
        if kind not in targets:
            raise ValueError(f"{module} is adapted but {kind!r} is not among the targets {sorted(targets)}")


def upstream_kind(target: str) -> str:
    """``to_q`` -> ``q_proj``, ``to_out.0`` -> ``o_proj``; other kinds are named alike."""
    return next((old.strip(".") for old, new in ATTENTION_RENAMES if new == f".{target}."), target)


def write_lokr(out: Path, network_state: dict[str, torch.Tensor], config: dict, base_variant: str) -> Path:
    """Write a LoKr as upstream's LoKr training does; returns the adapter folder ``out``.

    ``network_state`` is a LyCORIS network's ``state_dict()`` (``lycoris_<path>.lokr_w1``...), built
    on diffusers' DiT or on upstream's decoder; its module names are written as upstream's.
    ``config`` takes upstream's ``LoKRConfig`` fields (``linear_dim``, ``linear_alpha``, ``factor``,
    ``decompose_both``, ``use_tucker``, ``use_scalar``, ``weight_decompose``, ``target_modules``...;
    a ``lokr_`` prefix is accepted); missing fields get upstream's defaults, ``target_modules``
    the kinds the state adapts.
    """
    out = Path(out)
    _check_variant(base_variant)
    if not network_state:
        raise ValueError("the LoKr state is empty")
    tensors = {}
    for key, tensor in sorted(network_state.items()):
        module, _, part = key.rpartition(".")
        if not module.startswith(LYCORIS_PREFIX) or part not in LOKR_PARTS + LOKR_EXTRAS:
            raise ValueError(f"{key!r} is not a LyCORIS LoKr key (lycoris_<module>.lokr_w1 ...)")
        tensors[f"{_upstream_lycoris(module)}.{part}"] = tensor.detach().to("cpu").contiguous()
    settings = _lokr_config(config, tensors)
    header = {"algo": "lokr", "format": "lycoris", VARIANT_KEY: base_variant}
    header[LOKR_CONFIG_KEY] = json.dumps(settings, ensure_ascii=True)
    return _publish(
        out, {LOKR_WEIGHTS}, lambda folder: save_file(tensors, str(folder / LOKR_WEIGHTS), header)
    )


def _lokr_config(config: dict, tensors: dict[str, torch.Tensor]) -> dict:
    settings = {key.removeprefix("lokr_"): value for key, value in config.items() if key != "adapter_type"}
    settings = (
        LOKR_DEFAULTS
        | {"target_modules": sorted({lokr_kind(k.rpartition(".")[0]) for k in tensors})}
        | settings
    )
    dim = settings["linear_dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"linear_dim must be a whole number of at least 1, got {dim!r}")
    seen = {t.shape[1] for k, t in tensors.items() if k.endswith((".lokr_w1_a", ".lokr_w2_a"))}
    if seen and seen != {dim}:
        raise ValueError(f"the config says LoKr dimension {dim}, the weights have {sorted(seen)}")
    return settings


def _upstream_lycoris(module: str) -> str:
    """A LyCORIS name with diffusers' module names -> upstream's (the same renames as the DiT's own
    weights, on names whose "." are "_"); names already upstream's are left as they are."""
    path = module.removeprefix(LYCORIS_PREFIX) + "_"
    for upstream, ours in ATTENTION_RENAMES:
        path = path.replace(ours.replace(".", "_"), upstream.replace(".", "_"))
    for upstream, ours in TRANSFORMER_RENAMES:
        ours, upstream = ours.replace(".", "_"), upstream.replace(".", "_")
        if path.startswith(ours):
            path = upstream + path[len(ours) :]
    return LYCORIS_PREFIX + path[:-1]


def _check_variant(base_variant: str) -> None:
    if not isinstance(base_variant, str) or not base_variant.strip():
        raise ValueError(
            f"base_variant must name the DiT trained on (base, turbo, xl-base...), got {base_variant!r}"
        )


def _publish(final: Path, owned: set[str], write: Callable[[Path], None]) -> Path:
    """Write a folder under a hidden temporary name and rename it to ``final``, replacing an
    earlier save of the same adapter (a folder holding only ``owned`` files)."""
    if final.exists() and (not final.is_dir() or not {p.name for p in final.iterdir()} <= owned):
        raise ValueError(f"{final} exists and holds other files; write the adapter to a new or empty folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    temporary.mkdir()
    try:
        write(temporary)
        if not final.exists():
            temporary.rename(final)
            return final
        previous = temporary.with_suffix(".old")
        final.rename(previous)
        try:
            temporary.rename(final)
        except BaseException:
            previous.rename(final)  # the earlier save stays in place
            raise
        shutil.rmtree(previous, ignore_errors=True)
        return final
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
