"""The LoRA catalog: adapters in ``ACESTEP_LORA_DIR``, in diffusers' or upstream's (PEFT) LoRA
format, or LoKr adapters in LyCORIS' format.

Torch-free: a server lists and checks adapters by reading safetensors headers only (and a
LoKr's scalar ``alpha`` when the file records no config).

- diffusers format: a ``.safetensors`` file (or a folder holding ``pytorch_lora_weights.safetensors``)
  with keys ``transformer.layers.N.<attn>.<to_q|to_k|to_v|to_out.0>.lora_A|lora_B.weight`` and its
  LoRA config as JSON under the header key ``lora_adapter_metadata``;
- upstream (PEFT) format: a folder with ``adapter_config.json`` and ``adapter_model.safetensors``,
  keys ``base_model.model.layers.N.<attn>.<q_proj|...>.lora_A|lora_B.weight``;
- LoKr (LyCORIS): a folder holding ``lokr_weights.safetensors`` (what upstream's LoKr training
  writes), or a ``.safetensors`` file with LyCORIS keys ``lycoris_<module path, "." as "_">.lokr_w1``
  (``lokr_w1_a``/``lokr_w1_b``, ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b``, ``alpha``...). Its
  config is JSON under the header key ``lokr_config`` (upstream's ``LoKRConfig`` fields); its rank
  is the LoKr dimension (``linear_dim``).

The base model an adapter was trained on is read from the header key ``acestep_base_variant``
(what acestep writes), else from ``base_model_name_or_path`` in the PEFT config or the diffusers
metadata when it names a DiT folder (``acestep-v15-base`` -> ``base``); otherwise it is unknown.
Pickle files (``.pt``, ``.bin``, ``.ckpt``) are refused: they can run code when read.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from acestep.checkpoints.variants import detect_variant
from acestep.settings import lora_dir as lora_dir  # the folder this catalog scans

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
METADATA_KEY = "lora_adapter_metadata"
VARIANT_KEY = "acestep_base_variant"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
PEFT_SUFFIX = "-peft"  # a trained LoRA's PEFT copy: <name>-peft beside <name> (lora/formats.py)
LOKR_WEIGHTS = "lokr_weights.safetensors"  # upstream's name for a LoKr adapter's file
LOKR_CONFIG_KEY = "lokr_config"
# Upstream's LoKRConfig fields and defaults, as recorded in a LoKr file's ``lokr_config``.
LOKR_DEFAULTS: dict = {
    "linear_dim": 64,
    "linear_alpha": 128,
    "factor": -1,
    "decompose_both": False,
    "use_tucker": False,
    "use_scalar": False,
    "weight_decompose": False,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "full_matrix": False,
    "bypass_mode": False,
    "rs_lora": False,
    "unbalanced_factorization": False,
}
# The tensors of one LyCORIS LoKr module (lycoris' LokrModule.weight_list), and those that mark one.
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2")
LOKR_EXTRAS = ("alpha", "dora_scale")
LOKR_MARKERS = ("lokr_w1", "lokr_w1_a")
LYCORIS_PREFIX = "lycoris_"  # LyCORIS names a module "lycoris_" + its path with "." as "_"
# The module kind in a LyCORIS name: what follows the block (``lycoris_layers_3_self_attn_q_proj``).
_LOKR_KIND = re.compile(r"^lycoris_(?:layers_\d+_(?:self_attn|cross_attn|mlp)_)?(?P<kind>.+)$")


class LoraError(ValueError):
    """An adapter that cannot be used, with the reason (a 4xx for the API)."""


class LoraNotFound(LoraError):
    """No adapter of that name in the LoRA folder (a 404 where the name is the resource)."""


@dataclass(frozen=True)
class LoraInfo:
    name: str
    path: str  # the weights file
    format: str  # "diffusers" | "peft" | "lokr"
    base_variant: str | None  # "base", "turbo", "sft", "xl-base", ...; None when not recorded
    rank: int  # LoKr: its dimension (linear_dim)
    alpha: float
    targets: tuple[str, ...]  # module kinds adapted, e.g. ("to_k", "to_q", "to_v")
    modules: int  # how many Linear layers it adapts

    def as_dict(self) -> dict:
        return asdict(self) | {"targets": list(self.targets)}


def variant_tag(folder_or_path: str) -> str | None:
    """``acestep-v15-xl-base`` -> ``xl-base``; None unless the name is a DiT folder's."""
    name = Path(str(folder_or_path).rstrip("/")).name.lower()
    if not name.startswith("acestep-v15"):
        return None
    return detect_variant({}, name).tag


def find(directory: str | Path, names: list[str] | tuple[str, ...], model_tag: str | None) -> list[LoraInfo]:
    """The adapters ``names`` in ``directory``, each usable on a ``model_tag`` DiT (None: not
    checked); ``LoraNotFound`` or ``LoraError`` with the reason otherwise."""
    if not names:
        return []
    found, problems = scan(directory)
    infos = []
    for name in names:
        problem = next((why for entry, why in problems.items() if name in (entry, Path(entry).stem)), None)
        if name not in found and problem is not None:
            raise LoraError(f"LoRA {name!r} cannot be used: {problem}")
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise LoraNotFound(f"no LoRA named {name!r} in {directory} (available: {known})")
        info = found[name]
        if model_tag is not None and info.base_variant not in (None, model_tag):
            kind = "LoKr" if info.format == "lokr" else "LoRA"
            raise LoraError(
                f"{kind} {name!r} was trained on the {info.base_variant} DiT; this model is {model_tag}"
                f"{_size_note(info.base_variant, model_tag)}. "
                f"Use an adapter made for {model_tag}, or serve a {info.base_variant} model"
            )
        infos.append(info)
    return infos


def _size_note(trained_on: str, model_tag: str) -> str:
    """Why an adapter cannot cross between the 2B and XL (4B) DiTs: their layers differ in width."""
    trained, here = ("an XL" if tag.startswith("xl-") else "a 2B" for tag in (trained_on, model_tag))
    if trained == here:
        return ""
    return f" ({trained} adapter on {here} DiT: their layers have different widths)"


def read_lora(path: str | Path) -> LoraInfo:
    """Describe one adapter (a file or a folder), checking its header; ``LoraError`` if unusable."""
    path = Path(path)
    name = path.stem if path.is_file() else path.name
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraError(f"{name}: {path.suffix} files are pickles and are not loaded; use safetensors")
    config: dict = {}
    if path.is_dir():
        if (path / PEFT_CONFIG).is_file():
            weights, fmt = path / PEFT_WEIGHTS, "peft"
            try:
                config = json.loads((path / PEFT_CONFIG).read_text())
            except (OSError, ValueError) as exc:
                raise LoraError(f"{name}: {PEFT_CONFIG} is not valid JSON ({exc})") from None
        elif (path / LOKR_WEIGHTS).is_file():
            weights, fmt = path / LOKR_WEIGHTS, "lokr"
        else:
            weights, fmt = path / DIFFUSERS_WEIGHTS, "diffusers"
        if not weights.is_file():
            raise LoraError(f"{name}: no {weights.name} in {path}")
    elif path.suffix == ".safetensors":
        weights, fmt = path, "diffusers"
    else:
        raise LoraError(f"{name}: not a LoRA (a .safetensors file or an adapter folder)")
    shapes, header = _read_header(weights, name)
    if fmt == "diffusers" and (LOKR_CONFIG_KEY in header or any(_is_lokr_key(key) for key in shapes)):
        fmt = "lokr"  # LyCORIS keys in a single file
    if fmt == "lokr":
        return _read_lokr(name, weights, shapes, header)
    if fmt == "diffusers" and any(".q_proj." in key or ".k_proj." in key for key in shapes):
        fmt = "peft"  # upstream keys in a single file
    metadata = _json(header.get(METADATA_KEY), name)
    rank, modules, targets = _check_pairs(shapes, name)
    alpha = config.get("lora_alpha") or metadata.get("lora_alpha") or metadata.get("transformer.lora_alpha")
    declared = config.get("r") or metadata.get("r") or metadata.get("transformer.r")
    if declared and int(declared) != rank:
        raise LoraError(f"{name}: its config says rank {declared}, its weights have rank {rank}")
    base = header.get(VARIANT_KEY) or variant_tag(
        config.get("base_model_name_or_path") or metadata.get("base_model_name_or_path") or ""
    )
    return LoraInfo(
        name=name,
        path=str(weights),
        format=fmt,
        base_variant=base,
        rank=rank,
        alpha=float(alpha) if alpha else float(rank),
        targets=targets,
        modules=modules,
    )


def scan(directory: str | Path) -> tuple[dict[str, LoraInfo], dict[str, str]]:
    """Every adapter in ``directory`` by name, and the entries that are not usable with why."""
    directory = Path(directory)
    found: dict[str, LoraInfo] = {}
    problems: dict[str, str] = {}
    if not directory.is_dir():
        return found, problems
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or (
            entry.is_file() and entry.suffix not in (".safetensors", *PICKLE_SUFFIXES)
        ):
            continue
        try:
            info = read_lora(entry)
        except LoraError as exc:
            problems[entry.name] = str(exc)
            continue
        if info.name in found:
            problems[entry.name] = f"{info.name}: two adapters have this name; rename one"
            continue
        found[info.name] = info
    return found, problems


def _read_header(weights: Path, name: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="numpy") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            return shapes, dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises several types for damaged files
        raise LoraError(f"{name}: {weights.name} is not a readable safetensors file ({exc})") from None


def _json(text: str | None, name: str, key: str = METADATA_KEY) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise LoraError(f"{name}: its {key} is not JSON ({exc})") from None
    return value if isinstance(value, dict) else {}


def _check_pairs(shapes: dict[str, tuple[int, ...]], name: str) -> tuple[int, int, tuple[str, ...]]:
    """Every module has a lora_A [r, in] and a lora_B [out, r] of one rank r."""
    if not shapes:
        raise LoraError(f"{name}: the file holds no tensors")
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                pairs.setdefault(key.split(marker)[0], {})[part] = shape
                break
        else:
            raise LoraError(f"{name}: {key!r} is not a LoRA weight (lora_A / lora_B)")
    ranks = set()
    for module, parts in pairs.items():
        a, b = parts.get("lora_A"), parts.get("lora_B")
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise LoraError(f"{name}: {module} needs a lora_A [r, in] and a lora_B [out, r] of one rank")
        ranks.add(a[0])
    if len(ranks) != 1:
        raise LoraError(f"{name}: its modules have different ranks {sorted(ranks)}")
    kinds = {
        module.rsplit(".", 2)[-2] if module.endswith(".0") else module.rsplit(".", 1)[-1] for module in pairs
    }
    return ranks.pop(), len(pairs), tuple(sorted(kinds))


def _is_lokr_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in LOKR_MARKERS


def _read_lokr(name: str, weights: Path, shapes: dict[str, tuple[int, ...]], header: dict) -> LoraInfo:
    """A LoKr file: every module complete, one LoKr dimension, agreeing with its recorded config."""
    config = _json(header.get(LOKR_CONFIG_KEY), name, LOKR_CONFIG_KEY)
    dims, modules, kinds = _check_lokr(shapes, name)
    declared = config.get("linear_dim")
    if declared and dims and dims != {int(declared)}:
        raise LoraError(f"{name}: its config says LoKr dimension {declared}, its weights have {sorted(dims)}")
    if len(dims) > 1:
        raise LoraError(f"{name}: its modules have different LoKr dimensions {sorted(dims)}")
    # Modules whose factors are both full matrices show no dimension; the config then tells it.
    rank = int(declared) if declared else (dims.pop() if dims else 1)
    alpha = config.get("linear_alpha")
    return LoraInfo(
        name=name,
        path=str(weights),
        format="lokr",
        base_variant=header.get(VARIANT_KEY),
        rank=rank,
        alpha=float(alpha) if alpha else _lokr_alpha(weights, shapes, rank),
        targets=kinds,
        modules=modules,
    )


def _check_lokr(shapes: dict[str, tuple[int, ...]], name: str) -> tuple[set[int], int, tuple[str, ...]]:
    """Every key is ``<lycoris module>.<LoKr tensor>`` and every module has both Kronecker factors
    (whole or as a low-rank pair); returns the dimensions seen, the module count and kinds."""
    if not shapes:
        raise LoraError(f"{name}: the file holds no tensors")
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        module, _, part = key.rpartition(".")
        if not module.startswith(LYCORIS_PREFIX) or part not in LOKR_PARTS + LOKR_EXTRAS:
            raise LoraError(f"{name}: {key!r} is not a LoKr weight (lycoris_<module>.lokr_w1 ...)")
        modules.setdefault(module, {})[part] = shape
    dims = set()
    for module, parts in modules.items():
        for factor in ("w1", "w2"):
            pair = (f"lokr_{factor}_a", f"lokr_{factor}_b")
            if f"lokr_{factor}" not in parts and not all(p in parts for p in pair):
                raise LoraError(f"{name}: {module} needs lokr_{factor} or both {pair[0]} and {pair[1]}")
            if f"lokr_{factor}" not in parts:
                dims.add(parts[pair[0]][1])
    kinds = {lokr_kind(module) for module in modules}
    return dims, len(modules), tuple(sorted(kinds))


def lokr_kind(module: str) -> str:
    """``lycoris_layers_3_self_attn_q_proj`` -> ``q_proj``: the name after the block's."""
    match = _LOKR_KIND.match(module)
    return match["kind"] if match and match["kind"] else module


def _lokr_alpha(weights: Path, shapes: dict[str, tuple[int, ...]], rank: int) -> float:
    """No recorded config: the first module's ``alpha`` tensor (a scalar, read without torch)."""
    from safetensors import safe_open

    key = next((k for k in sorted(shapes) if k.endswith(".alpha")), None)
    if key is None:
        return float(rank)
    try:
        with safe_open(str(weights), framework="numpy") as handle:
            return float(handle.get_tensor(key))
    except Exception:  # bfloat16 has no numpy type; the alpha then stays unreported
        return float(rank)


def no_adapters() -> dict:
    """The adapter status of a model with none attached (or of a runner without a model)."""
    return {"loaded": [], "active": [], "bytes": 0}
