"""Helpers for the checkpoint tests: copy a tiny checkpoint, rewrite a weights file, expect an error."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from acestep import AceStep
from acestep.checkpoints import CheckpointError

UPSTREAM_DIT = "acestep-v15-base"
GENUINE_UPSTREAM_KEYS = (
    "decoder.layers.0.self_attn.q_proj.weight",
    "decoder.layers.0.self_attn.o_proj.weight",
    "decoder.layers.0.cross_attn.k_norm.weight",
    "decoder.proj_in.1.weight",
    "decoder.proj_out.1.weight",
    "encoder.lyric_encoder.layers.0.self_attn.q_norm.weight",
    "null_condition_emb",
    "tokenizer.quantizer.project_in.weight",
    "detokenizer.special_tokens",
)
DIFFUSERS_ONLY_FRAGMENTS = (
    ".to_q.",
    ".to_k.",
    ".to_v.",
    ".to_out.",
    ".norm_q.",
    ".norm_k.",
    "proj_in_conv",
    "proj_out_conv",
)


def copy_checkpoint(src: Path, tmp_path: Path, name: str = "ckpt") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def rewrite_weights(path: Path, edit) -> None:
    """Load a safetensors file, let ``edit`` change the dict in place, write it back."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata=metadata)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def load_error(path: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as exc:
        AceStep.from_pretrained(path, device="cpu", **kwargs)
    return str(exc.value)
