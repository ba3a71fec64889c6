"""Strict checkpoint loading: every bad key, shape or file is a CheckpointError that names it."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from _ckpt_util import (
    UPSTREAM_DIT,
)
from _ckpt_util import (
    copy_checkpoint as _copy,
)
from _ckpt_util import (
    load_error as _load_error,
)
from _ckpt_util import (
    rewrite_weights as _rewrite,
)
from safetensors.torch import load_file

from acestep import AceStep
from acestep.checkpoints import CheckpointError, resolve
from acestep.testing import TINY_LATENT_DIM

# --------------------------------------------------------------------------- strict loading


RENAMES = [
    (
        "upstream",
        f"{UPSTREAM_DIT}/model.safetensors",
        "decoder.layers.0.self_attn.q_proj.weight",
        "decoder.layers.0.self_attn.query_proj.weight",
    ),
    (
        "upstream",
        f"{UPSTREAM_DIT}/model.safetensors",
        "encoder.lyric_encoder.layers.0.self_attn.q_norm.weight",
        "encoder.lyric_encoder.layers.0.self_attn.qnorm.weight",
    ),
    (
        "upstream",
        f"{UPSTREAM_DIT}/model.safetensors",
        "tokenizer.quantizer.project_in.weight",
        "tokenizer.quantizer.proj_in.weight",
    ),
    (
        "upstream",
        f"{UPSTREAM_DIT}/model.safetensors",
        "detokenizer.special_tokens",
        "detokenizer.special_token",
    ),
    ("upstream", "vae/diffusion_pytorch_model.safetensors", "decoder.conv1.bias", "decoder.conv_1.bias"),
    ("upstream", "Qwen3-Embedding-0.6B/model.safetensors", "norm.weight", "final_norm.weight"),
    (
        "diffusers",
        "transformer/diffusion_pytorch_model.safetensors",
        "layers.0.self_attn.to_q.weight",
        "layers.0.self_attn.to_query.weight",
    ),
    (
        "diffusers",
        "condition_encoder/diffusion_pytorch_model.safetensors",
        "null_condition_emb",
        "null_cond_emb",
    ),
    (
        "diffusers",
        "audio_tokenizer/diffusion_pytorch_model.safetensors",
        "quantizer.project_in.weight",
        "quantizer.projection_in.weight",
    ),
]


@pytest.mark.parametrize(("layout", "rel", "old", "new"), RENAMES, ids=[f"{r[0]}:{r[2]}" for r in RENAMES])
def test_renamed_key_is_named(
    layout: str, rel: str, old: str, new: str, upstream_base: Path, diffusers_base: Path, tmp_path: Path
) -> None:
    root = _copy(upstream_base if layout == "upstream" else diffusers_base, tmp_path)

    def rename(state: dict) -> None:
        assert old in state, f"test setup: {old} not in {rel}"
        state[new] = state.pop(old)

    _rewrite(root / rel, rename)
    message = _load_error(root)
    assert new in message, message
    assert old in message, message
    assert "missing keys" in message and "unexpected keys" in message
    assert rel.split("/")[0] in message  # the file (or its folder) is named


def test_renamed_key_with_unknown_prefix_is_named(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    _rewrite(
        root / UPSTREAM_DIT / "model.safetensors",
        lambda s: s.__setitem__("null_condition_embedding", s.pop("null_condition_emb")),
    )
    message = _load_error(root)
    assert "null_condition_embedding" in message and "unexpected keys" in message


@pytest.mark.parametrize("layout", ["upstream", "diffusers"])
def test_shape_mismatch_is_named(
    layout: str, upstream_base: Path, diffusers_base: Path, tmp_path: Path
) -> None:
    if layout == "upstream":
        root = _copy(upstream_base, tmp_path)
        rel, key = f"{UPSTREAM_DIT}/model.safetensors", "decoder.proj_in.1.weight"
    else:
        root = _copy(diffusers_base, tmp_path)
        rel, key = "transformer/diffusion_pytorch_model.safetensors", "proj_in_conv.weight"
    shapes = {}

    def widen(state: dict) -> None:
        shapes["model"] = tuple(state[key].shape)
        bigger = list(state[key].shape)
        bigger[0] += 1
        state[key] = torch.zeros(bigger)
        shapes["file"] = tuple(bigger)

    _rewrite(root / rel, widen)
    message = _load_error(root)
    assert "shape mismatch" in message
    assert key in message
    assert str(shapes["file"]) in message and str(shapes["model"]) in message
    assert "missing keys" not in message and "unexpected keys" not in message


@pytest.mark.parametrize(
    ("layout", "rel", "extra"),
    [
        ("upstream", f"{UPSTREAM_DIT}/model.safetensors", "decoder.layers.0.extra_scale"),
        ("upstream", f"{UPSTREAM_DIT}/model.safetensors", "lm_head.weight"),
        ("upstream", "vae/diffusion_pytorch_model.safetensors", "encoder.extra.weight"),
        ("diffusers", "transformer/diffusion_pytorch_model.safetensors", "layers.0.extra_scale"),
    ],
)
def test_extra_key_is_named(
    layout: str, rel: str, extra: str, upstream_base: Path, diffusers_base: Path, tmp_path: Path
) -> None:
    root = _copy(upstream_base if layout == "upstream" else diffusers_base, tmp_path)
    _rewrite(root / rel, lambda s: s.__setitem__(extra, torch.ones(3)))
    message = _load_error(root)
    assert "unexpected keys" in message and extra in message
    assert "missing keys" not in message


def test_unexpected_key_is_named_as_in_the_file(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    extra = "decoder.extra.to_q.weight"
    _rewrite(root / UPSTREAM_DIT / "model.safetensors", lambda s: s.__setitem__(extra, torch.ones(2)))
    message = _load_error(root)
    assert extra in message, message


def test_keys_colliding_after_rename_are_refused(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)

    def add_diffusers_twin(state: dict) -> None:
        twin = torch.zeros_like(state["decoder.layers.0.self_attn.q_proj.weight"])
        state["decoder.layers.0.self_attn.to_q.weight"] = twin

    _rewrite(root / UPSTREAM_DIT / "model.safetensors", add_diffusers_twin)
    message = _load_error(root)
    assert "decoder.layers.0.self_attn.to_q.weight" in message


def test_stray_fsq_keys_are_dropped_on_load(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)

    def add(state: dict) -> None:
        state["tokenizer.quantizer.layers.0._levels"] = torch.tensor([8, 8, 8, 5, 5, 5], dtype=torch.int32)
        state["tokenizer.quantizer.layers.0._basis"] = torch.ones(6, dtype=torch.int32)

    _rewrite(root / UPSTREAM_DIT / "model.safetensors", add)
    engine = AceStep.from_pretrained(root, device="cpu")
    assert engine.components.audio_tokenizer is not None
    assert not any("layers.0._levels" in k for k in engine.components.audio_tokenizer.state_dict())


def test_missing_silence_latent_is_clear(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    (root / UPSTREAM_DIT / "silence_latent.pt").unlink()
    message = _load_error(root)
    assert "silence_latent.pt" in message and UPSTREAM_DIT in message
    with pytest.raises(CheckpointError, match="silence_latent.pt"):
        resolve(root)


def test_silence_latent_with_wrong_channels(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    torch.save(torch.zeros(1, TINY_LATENT_DIM + 1, 50), root / UPSTREAM_DIT / "silence_latent.pt")
    message = _load_error(root)
    assert "silence_latent.pt" in message and f"{TINY_LATENT_DIM + 1} channels" in message


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _wrong_rank_silence(path: Path) -> None:
    torch.save(torch.zeros(2, TINY_LATENT_DIM, 50), path)


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a torch file")


def _pickled_object(path: Path) -> None:
    torch.save({"latent": torch.zeros(1, TINY_LATENT_DIM, 10), "cls": Path}, path)


UNREADABLE = [
    ("upstream", f"{UPSTREAM_DIT}/silence_latent.pt", _wrong_rank_silence),
    ("upstream", f"{UPSTREAM_DIT}/silence_latent.pt", _garbage),
    ("upstream", f"{UPSTREAM_DIT}/silence_latent.pt", _pickled_object),
    ("upstream", f"{UPSTREAM_DIT}/model.safetensors", _truncate),
    ("diffusers", "condition_encoder/config.json", _garbage),
]


@pytest.mark.parametrize(
    ("layout", "rel", "spoil"), UNREADABLE, ids=[f"{r[1]}-{r[2].__name__}" for r in UNREADABLE]
)
def test_unreadable_file_is_a_checkpoint_error(
    layout: str, rel: str, spoil, upstream_base: Path, diffusers_base: Path, tmp_path: Path
) -> None:
    root = _copy(upstream_base if layout == "upstream" else diffusers_base, tmp_path)
    spoil(root / rel)
    message = _load_error(root)
    assert Path(rel).name in message


def test_pickled_silence_latent_is_refused(upstream_base: Path, tmp_path: Path) -> None:
    """``silence_latent.pt`` is read with weights_only=True: arbitrary pickled objects do not load."""
    root = _copy(upstream_base, tmp_path)
    _pickled_object(root / UPSTREAM_DIT / "silence_latent.pt")
    with pytest.raises((pickle.UnpicklingError, CheckpointError)) as exc:
        AceStep.from_pretrained(root, device="cpu")
    assert "Weights only" in str(exc.value) or "silence_latent.pt" in str(exc.value)


def test_silence_latent_holding_a_dict_is_refused(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    torch.save({"latent": torch.zeros(1, TINY_LATENT_DIM, 10)}, root / UPSTREAM_DIT / "silence_latent.pt")
    message = _load_error(root)
    assert "silence_latent.pt" in message and "must hold a tensor" in message


def test_pickle_only_dit_folder_is_refused(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    weights = root / UPSTREAM_DIT / "model.safetensors"
    torch.save(load_file(str(weights)), root / UPSTREAM_DIT / "pytorch_model.bin")
    weights.unlink()
    message = _load_error(root)
    assert "safetensors" in message
    assert "pytorch_model.bin" in message


def test_pickle_hint_does_not_list_silence_latent(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    weights = root / UPSTREAM_DIT / "model.safetensors"
    torch.save(load_file(str(weights)), root / UPSTREAM_DIT / "pytorch_model.bin")
    weights.unlink()
    message = _load_error(root)
    assert "silence_latent.pt" not in message, message


def test_pickle_only_vae_folder_is_refused(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    weights = root / "vae" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), root / "vae" / "diffusion_pytorch_model.bin")
    weights.unlink()
    message = _load_error(root)
    assert "safetensors" in message and "diffusion_pytorch_model.bin" in message


def test_pickle_only_diffusers_component_is_refused(diffusers_base: Path, tmp_path: Path) -> None:
    root = _copy(diffusers_base, tmp_path)
    weights = root / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), root / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()
    message = _load_error(root)
    assert "safetensors" in message and "transformer" in message


def test_incomplete_upstream_root(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    shutil.rmtree(root / "vae")
    with pytest.raises(CheckpointError, match="vae"):
        resolve(root)


def test_incomplete_diffusers_folder(diffusers_base: Path, tmp_path: Path) -> None:
    root = _copy(diffusers_base, tmp_path)
    shutil.rmtree(root / "condition_encoder")
    with pytest.raises(CheckpointError, match="condition_encoder"):
        resolve(root)


def test_not_an_acestep_pipeline(diffusers_base: Path, tmp_path: Path) -> None:
    root = _copy(diffusers_base, tmp_path)
    index = json.loads((root / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (root / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="StableDiffusionPipeline"):
        resolve(root)


def test_missing_path_is_clear(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="does not exist"):
        AceStep.from_pretrained(missing, device="cpu")


def test_root_without_dit_folders(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="acestep-v15-"):
        resolve(tmp_path)
