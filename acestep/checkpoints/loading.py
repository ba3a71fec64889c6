"""Build diffusers / transformers modules from checkpoint files, strictly and without pickle.

Every component goes through :func:`load_strict`: a missing or unexpected key, or a shape
mismatch, is a :class:`CheckpointError` that names the keys (in the file's own naming).
Parameters are created on the meta device and replaced by the file's tensors, so loading a
2B model does not first initialise 2B random weights.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AceStepTransformer1DModel, AutoencoderOobleck
from diffusers.pipelines.ace_step.modeling_ace_step import (
    AceStepAudioTokenDetokenizer,
    AceStepAudioTokenizer,
    AceStepConditionEncoder,
)
from loguru import logger
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase, Qwen3Model

from acestep.checkpoints import convert
from acestep.checkpoints.layout import CheckpointError, CheckpointPaths, find_weights, read_json
from acestep.memory.mixed import apply_plan
from acestep.memory.precision import PrecisionPlan

# The order components run in, declared once; offload and memory planning read it.
OFFLOAD_ORDER = (
    "text_encoder",
    "condition_encoder",
    "audio_tokenizer",
    "audio_token_detokenizer",
    "transformer",
    "vae",
)

DIT_CLASSES = {
    "transformer": AceStepTransformer1DModel,
    "condition_encoder": AceStepConditionEncoder,
    "audio_tokenizer": AceStepAudioTokenizer,
    "audio_token_detokenizer": AceStepAudioTokenDetokenizer,
}
_MAX_NAMED = 20


@dataclass
class Components:
    """The loaded networks of one checkpoint (the LM is separate)."""

    text_encoder: Qwen3Model
    tokenizer: PreTrainedTokenizerBase
    condition_encoder: AceStepConditionEncoder
    transformer: AceStepTransformer1DModel
    vae: AutoencoderOobleck
    audio_tokenizer: AceStepAudioTokenizer | None = None
    audio_token_detokenizer: AceStepAudioTokenDetokenizer | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        """Networks in run order (the tokenizer is not a module)."""
        return {name: getattr(self, name) for name in OFFLOAD_ORDER if getattr(self, name) is not None}


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device (no memory, no init); buffers such as RoPE tables stay real.

    This swaps ``nn.Module.register_parameter`` process-wide for the duration, so it is serialised;
    modules built by other threads meanwhile would also get meta parameters.
    """
    _PATCH_LOCK.acquire()
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register
        _PATCH_LOCK.release()


def _named(keys: list[str], rename: Callable[[str], str]) -> str:
    shown = ", ".join(rename(k) for k in keys[:_MAX_NAMED])
    more = f" and {len(keys) - _MAX_NAMED} more" if len(keys) > _MAX_NAMED else ""
    return shown + more


def load_strict(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    what: str,
    file_key: Callable[[str], str] = lambda k: k,
) -> None:
    """Load ``state`` into ``module`` exactly, or raise naming every offending key.

    ``file_key`` maps a module key back to the name it has in the file, so messages name what
    the user can find with a safetensors viewer.
    """
    expected = module.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_named(missing, file_key)}")
    if unexpected:
        problems.append(f"unexpected keys: {_named(unexpected, file_key)}")
    if mismatched:
        shapes = [
            f"{file_key(k)} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
            for k in mismatched
        ]
        problems.append(f"shape mismatches: {_named(shapes, lambda s: s)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True, assign=True)


SHARD_INDEX = "model.safetensors.index.json"  # how the XL repos ship their (four) weight shards


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or every shard a ``*.safetensors.index.json`` names, as tensors on the
    CPU; a damaged or missing file is a CheckpointError naming it."""
    if path.name.endswith(".safetensors.index.json"):
        return _read_shards(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError or ValueError
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    """The shards of ``index``, each read once; every key must come from the shard the index names."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        file = index.parent / str(shard)
        if Path(str(shard)).name != str(shard) or not file.name.endswith(".safetensors"):
            raise CheckpointError(f"{index} names {shard!r}, not a .safetensors file beside it")
        if not file.is_file():
            raise CheckpointError(f"missing weight shard {file} (named by {index.name})")
        part = read_weights(file)
        strays = sorted(key for key in part if weight_map.get(key) != shard)
        if strays:
            raise CheckpointError(f"{file} holds keys {index.name} places elsewhere: {_named(strays, str)}")
        state |= part
    return state


def dit_weights(folder: Path) -> Path:
    """A DiT folder's weights: the shard index where there is one (XL), else the single file."""
    return folder / SHARD_INDEX if (folder / SHARD_INDEX).is_file() else find_weights(folder)


def _build(cls: type, config: dict) -> torch.nn.Module:
    with _parameters_on_meta():
        return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)


def load_silence_latent(path: Path) -> torch.Tensor:
    """``silence_latent.pt`` as [1, T, C], read with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything but plain tensors, RuntimeError for junk
        raise CheckpointError(f"cannot read {path}: it must be a plain tensor saved with torch.save") from exc
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{path} must hold a tensor, got {type(value).__name__}")
    try:
        return convert.silence_latent_to_diffusers(value).float()
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _load_upstream_dit(paths: CheckpointPaths) -> dict[str, torch.nn.Module]:
    weights = dit_weights(paths.dit_dir)
    parts = convert.split_upstream_state_dict(read_weights(weights))
    unknown = sorted(parts.pop("unknown"))
    if unknown:
        raise CheckpointError(f"{weights}: unexpected keys: {_named(unknown, lambda k: k)}")
    silence = load_silence_latent(paths.dit_dir / "silence_latent.pt")
    parts["condition_encoder"]["silence_latent"] = silence
    configs = convert.component_configs(paths.dit_config)
    timbre_dim = configs["condition_encoder"].get("timbre_hidden_dim", 64)
    if silence.shape[-1] != timbre_dim:
        raise CheckpointError(
            f"{paths.dit_dir / 'silence_latent.pt'} has {silence.shape[-1]} channels, "
            f"the model expects {timbre_dim}"
        )
    modules = {}
    for name, cls in DIT_CLASSES.items():
        module = _build(cls, configs[name])
        # The buffer's placeholder length is arbitrary; the file decides it.
        if name == "condition_encoder":
            module.register_buffer("silence_latent", torch.empty(silence.shape), persistent=True)
        load_strict(
            module,
            parts[name],
            f"{weights} ({name})",
            file_key=lambda k, n=name: (
                "silence_latent.pt" if k == "silence_latent" else convert.upstream_key(n, k)
            ),
        )
        modules[name] = module
    return modules


def _load_diffusers_dit(paths: CheckpointPaths) -> dict[str, torch.nn.Module]:
    modules = {}
    for name, cls in DIT_CLASSES.items():
        folder = paths.root / name
        if not folder.is_dir():
            if name in ("audio_tokenizer", "audio_token_detokenizer"):
                logger.warning(f"{paths.root} has no {name}; cover and audio codes are unavailable")
                continue
            raise CheckpointError(f"missing component folder {folder}")
        weights = find_weights(folder)
        state = read_weights(weights)
        module = _build(cls, read_json(folder / "config.json"))
        if name == "condition_encoder" and "silence_latent" in state:
            module.register_buffer(
                "silence_latent", torch.empty(state["silence_latent"].shape), persistent=True
            )
        load_strict(module, state, str(weights))
        modules[name] = module
    return modules


def _load_text_encoder(folder: Path) -> Qwen3Model:
    config = AutoConfig.from_pretrained(str(folder))
    if config.model_type != "qwen3":
        raise CheckpointError(f"{folder}: expected a qwen3 text encoder, config says {config.model_type!r}")
    model = _build(Qwen3Model, config)
    weights = find_weights(folder)
    state = read_weights(weights)
    # A causal-LM export prefixes the body with "model." and adds a head the encoder does not use.
    if state and all(k.startswith("model.") or k == "lm_head.weight" for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    load_strict(model, state, str(weights))
    return model


def _load_vae(folder: Path) -> AutoencoderOobleck:
    vae = _build(AutoencoderOobleck, read_json(folder / "config.json"))
    weights = find_weights(folder)
    load_strict(vae, read_weights(weights), str(weights))
    return vae


def load_components(
    paths: CheckpointPaths, device: torch.device, precision: PrecisionPlan | torch.dtype
) -> Components:
    """Load every network of a resolved checkpoint onto ``device``, stored as ``precision`` says
    (a plain dtype: everything in it; a plan: its dtype, with its float32 parts kept in float32)."""
    if isinstance(precision, torch.dtype):
        precision = PrecisionPlan.uniform(precision)
    dit = _load_upstream_dit(paths) if paths.layout == "upstream" else _load_diffusers_dit(paths)
    tokenizer = AutoTokenizer.from_pretrained(str(paths.tokenizer_dir))
    components = Components(
        text_encoder=_load_text_encoder(paths.text_encoder_dir),
        tokenizer=tokenizer,
        vae=_load_vae(paths.vae_dir),
        **dit,
    )
    modules = components.modules()
    for module in modules.values():
        # nn.Module.to directly: diffusers' ModelMixin.to warns on every dtype cast.
        torch.nn.Module.to(module, device=device).eval().requires_grad_(False)
    apply_plan(modules, precision)
    return components
