"""In-memory mapping from upstream ACE-Step 1.5 DiT files to diffusers' component layout.

Upstream ships one ``model.safetensors`` per DiT folder holding four networks under prefixes
(``decoder.``, ``encoder.``, ``tokenizer.``, ``detokenizer.``) with transformers-style attention
names; diffusers splits them into four components and names attention ``to_q``/``to_out.0``/
``norm_q``. The mapping was read from upstream's checkpoint files and model code.
"""

from __future__ import annotations

import torch

# Upstream prefix -> diffusers component. ``null_condition_emb`` is an exact key (handled below).
PREFIX_TO_COMPONENT: dict[str, str] = {
    "decoder.": "transformer",
    "encoder.": "condition_encoder",
    "tokenizer.": "audio_tokenizer",
    "detokenizer.": "audio_token_detokenizer",
}

# Applied to every attention module; MLP names (gate_proj/up_proj/down_proj) are identical on both sides.
ATTENTION_RENAMES: tuple[tuple[str, str], ...] = (
    (".q_proj.", ".to_q."),
    (".k_proj.", ".to_k."),
    (".v_proj.", ".to_v."),
    (".o_proj.", ".to_out.0."),
    (".q_norm.", ".norm_q."),
    (".k_norm.", ".norm_k."),
)

# Only the DiT's patchify convolutions differ outside attention.
TRANSFORMER_RENAMES: tuple[tuple[str, str], ...] = (
    ("proj_in.1.", "proj_in_conv."),
    ("proj_out.1.", "proj_out_conv."),
)


def _is_stray_fsq_key(component: str, key: str) -> bool:
    # Upstream's FSQ ``layers.0`` has no parameters and its buffers are rebuilt from config;
    # some exports still carry them, so they are dropped rather than reported as unexpected.
    if component != "audio_tokenizer" or not key.startswith("quantizer."):
        return False
    return key.startswith("quantizer.layers.") or key.rsplit(".", 1)[-1] in {"_levels", "_basis", "scales"}


def _rename_attention(key: str) -> str:
    for old, new in ATTENTION_RENAMES:
        key = key.replace(old, new)
    return key


def _rename_prefix(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


# Names only diffusers uses; in an upstream file they mean the file is not what it claims to be.
_DIFFUSERS_ONLY = (
    ".to_q.",
    ".to_k.",
    ".to_v.",
    ".to_out.",
    ".norm_q.",
    ".norm_k.",
    "proj_in_conv.",
    "proj_out_conv.",
)


def split_upstream_state_dict(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split an upstream DiT state dict into per-component diffusers state dicts.

    Keys that match no known prefix, or that already carry diffusers-only names, go to the
    pseudo-component ``"unknown"`` so the strict loader names them. Excluding those names keeps
    the renames one-to-one, so :func:`upstream_key` recovers every file key exactly.
    """
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PREFIX_TO_COMPONENT.values()}
    out["unknown"] = {}
    for key, tensor in state.items():
        if key == "null_condition_emb":
            out["condition_encoder"][key] = tensor
            continue
        if any(name in key for name in _DIFFUSERS_ONLY):
            out["unknown"][key] = tensor
            continue
        for prefix, component in PREFIX_TO_COMPONENT.items():
            if key.startswith(prefix):
                new_key = key[len(prefix) :]
                if _is_stray_fsq_key(component, new_key):
                    break
                if component == "transformer":
                    new_key = _rename_prefix(new_key, TRANSFORMER_RENAMES)
                out[component][_rename_attention(new_key)] = tensor
                break
        else:
            out["unknown"][key] = tensor
    return out


def upstream_key(component: str, key: str) -> str:
    """The upstream name of a diffusers component key (the inverse of the split's renames)."""
    if component == "condition_encoder" and key == "null_condition_emb":
        return key
    prefix = {v: k for k, v in PREFIX_TO_COMPONENT.items()}[component]
    for old, new in ATTENTION_RENAMES:
        key = key.replace(new, old)
    if component == "transformer":
        key = _rename_prefix(key, tuple((new, old) for old, new in TRANSFORMER_RENAMES))
    return prefix + key


def join_to_upstream_state_dict(components: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`split_upstream_state_dict` (used to write upstream-layout test checkpoints).

    ``silence_latent`` is not part of upstream's ``model.safetensors``; it lives in ``silence_latent.pt``.
    """
    return {
        upstream_key(component, key): tensor
        for component, state in components.items()
        for key, tensor in state.items()
        if not (component == "condition_encoder" and key == "silence_latent")
    }


_SHARED_ATTENTION_KEYS = (
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "attention_bias",
    "attention_dropout",
    "rms_norm_eps",
)


def _encoder_width(cfg: dict) -> dict:
    """Width/head keys of the encoder side: XL configs carry separate ``encoder_*`` values."""
    return {
        "hidden_size": cfg.get("encoder_hidden_size", cfg["hidden_size"]),
        "intermediate_size": cfg.get("encoder_intermediate_size", cfg["intermediate_size"]),
        "num_attention_heads": cfg.get("encoder_num_attention_heads", cfg["num_attention_heads"]),
        "num_key_value_heads": cfg.get("encoder_num_key_value_heads", cfg["num_key_value_heads"]),
    }


def _sliding_window(cfg: dict) -> int | None:
    return cfg.get("sliding_window", 128) if cfg.get("use_sliding_window", True) else None


def component_configs(cfg: dict) -> dict[str, dict]:
    """Map an upstream DiT ``config.json`` to the four diffusers component configs."""
    shared = {k: cfg[k] for k in _SHARED_ATTENTION_KEYS if k in cfg}
    transformer = {
        k: cfg[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "in_channels",
            "audio_acoustic_hidden_dim",
            "patch_size",
            "layer_types",
            "is_turbo",
            "model_version",
            "encoder_hidden_size",
        )
        if k in cfg
    }
    transformer.update(shared)
    transformer["sliding_window"] = _sliding_window(cfg)

    enc = dict(shared)
    enc.update(_encoder_width(cfg))
    enc["sliding_window"] = _sliding_window(cfg)
    condition_encoder = dict(enc)
    condition_encoder.update(
        {
            k: cfg[k]
            for k in (
                "text_hidden_dim",
                "timbre_hidden_dim",
                "num_lyric_encoder_hidden_layers",
                "num_timbre_encoder_hidden_layers",
            )
            if k in cfg
        }
    )
    pooler_keys = ("audio_acoustic_hidden_dim", "pool_window_size", "num_attention_pooler_hidden_layers")
    detokenizer = dict(enc)
    detokenizer.update({k: cfg[k] for k in pooler_keys if k in cfg})
    tokenizer = dict(detokenizer)
    tokenizer.update(
        {k: cfg[k] for k in ("fsq_dim", "fsq_input_levels", "fsq_input_num_quantizers") if k in cfg}
    )
    return {
        "transformer": transformer,
        "condition_encoder": condition_encoder,
        "audio_tokenizer": tokenizer,
        "audio_token_detokenizer": detokenizer,
    }


def silence_latent_to_diffusers(tensor: torch.Tensor) -> torch.Tensor:
    """Upstream stores [1, C, T] (channel-first); diffusers' buffer is [1, T, C]."""
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise ValueError(f"silence_latent.pt must hold a [1, C, T] tensor, got shape {tuple(tensor.shape)}")
    return tensor.transpose(1, 2).contiguous()
