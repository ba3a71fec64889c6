"""Checkpoint folders: both layouts, variants, resolving the DiT, conversion, tiny-checkpoint determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _ckpt_util import (
    DIFFUSERS_ONLY_FRAGMENTS,
    GENUINE_UPSTREAM_KEYS,
    UPSTREAM_DIT,
)
from _ckpt_util import (
    copy_checkpoint as _copy,
)
from _ckpt_util import (
    tree_hashes as _tree_hashes,
)
from safetensors.torch import load_file

from acestep import AceStep
from acestep.checkpoints import OFFLOAD_ORDER, CheckpointError, convert, detect_variant, resolve
from acestep.checkpoints.layout import default_dit, list_dits
from acestep.testing import TINY_LATENT_DIM, TINY_SILENCE_FRAMES, make_tiny_checkpoint, tiny_dit_config

# --------------------------------------------------------------------------- both layouts


def test_both_layouts_load_identical_weights(engine_upstream_base, engine_diffusers_base) -> None:
    up, df = engine_upstream_base, engine_diffusers_base
    assert up.paths.layout == "upstream" and df.paths.layout == "diffusers"
    assert up.variant.name == df.variant.name == "base"
    up_modules, df_modules = up.components.modules(), df.components.modules()
    assert list(up_modules) == list(df_modules) == list(OFFLOAD_ORDER)
    for name in OFFLOAD_ORDER:
        a, b = up_modules[name].state_dict(), df_modules[name].state_dict()
        assert sorted(a) == sorted(b), name
        assert a, name
        for key in a:
            assert a[key].device.type == "cpu" and a[key].dtype == torch.float32, (name, key)
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs between layouts"


def test_loaded_weights_equal_file(engine_upstream_base, upstream_base: Path) -> None:
    """What was loaded is what the file holds (after renaming), not freshly initialised values."""
    state = load_file(str(upstream_base / UPSTREAM_DIT / "model.safetensors"))
    transformer = engine_upstream_base.components.transformer.state_dict()
    assert torch.equal(
        transformer["layers.0.self_attn.to_q.weight"], state["decoder.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(transformer["proj_in_conv.weight"], state["decoder.proj_in.1.weight"])
    encoder = engine_upstream_base.components.condition_encoder.state_dict()
    assert torch.equal(encoder["null_condition_emb"], state["null_condition_emb"])
    assert torch.equal(
        encoder["lyric_encoder.layers.0.self_attn.norm_q.weight"],
        state["encoder.lyric_encoder.layers.0.self_attn.q_norm.weight"],
    )
    for param in engine_upstream_base.components.transformer.parameters():
        assert param.device.type == "cpu"  # nothing left on the meta device
        assert not param.requires_grad


def test_both_layouts_share_tokenizer(engine_upstream_base, engine_diffusers_base) -> None:
    text = "# Caption\nA calm piano melody<|endoftext|>"
    ids_up = engine_upstream_base.components.tokenizer(text).input_ids
    ids_df = engine_diffusers_base.components.tokenizer(text).input_ids
    assert ids_up == ids_df
    assert len(ids_up) > 10


def test_silence_latent_transposed_on_load(
    engine_upstream_base, engine_diffusers_base, upstream_base: Path
) -> None:
    on_disk = torch.load(upstream_base / UPSTREAM_DIT / "silence_latent.pt", weights_only=True)
    assert tuple(on_disk.shape) == (1, TINY_LATENT_DIM, TINY_SILENCE_FRAMES)  # upstream: [1, C, T]
    loaded = engine_upstream_base.components.condition_encoder.silence_latent
    assert tuple(loaded.shape) == (1, TINY_SILENCE_FRAMES, TINY_LATENT_DIM)  # diffusers: [1, T, C]
    assert torch.equal(loaded, on_disk.transpose(1, 2))
    assert torch.equal(engine_upstream_base.silence_latent, loaded)
    assert torch.equal(engine_diffusers_base.silence_latent, loaded)


def test_silence_latent_to_diffusers() -> None:
    x = torch.arange(24.0).reshape(1, 3, 8)
    assert torch.equal(convert.silence_latent_to_diffusers(x), x.transpose(1, 2))
    assert torch.equal(convert.silence_latent_to_diffusers(x[0]), x.transpose(1, 2))  # [C, T] accepted
    with pytest.raises(ValueError, match=r"\[1, C, T\]"):
        convert.silence_latent_to_diffusers(torch.zeros(2, 3, 8))


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    ("config", "folder", "expected"),
    [
        ({"is_turbo": True}, "", "turbo"),
        ({"model_version": "turbo"}, "", "turbo"),
        ({"model_version": "Turbo"}, "whatever", "turbo"),
        ({"is_turbo": False, "model_version": "base"}, "acestep-v15-base", "base"),
        ({}, "acestep-v15-turbo", "turbo"),
        ({}, "acestep-v15-turbo-shift3", "turbo"),
        ({}, "acestep-v15-base", "base"),
        ({}, "", "base"),
        ({"model_version": "sft"}, "", "sft"),
        ({}, "acestep-v15-sft", "sft"),
        ({}, "acestep-v15-base-sft-fix-inst", "sft"),
        ({"model_version": "base"}, "my-turbo-copy", "base"),  # the config wins over the folder name
        (tiny_dit_config("turbo"), "", "turbo"),
        (tiny_dit_config("base"), "", "base"),
        (tiny_dit_config("sft"), "", "sft"),
    ],
)
def test_detect_variant(config: dict, folder: str, expected: str) -> None:
    assert detect_variant(config, folder).name == expected


def test_variant_properties() -> None:
    turbo = detect_variant({"is_turbo": True})
    assert turbo.is_turbo and not turbo.uses_guidance
    assert turbo.default_steps == 8
    assert turbo.supported_tasks == {"text2music", "repaint", "cover", "cover-nofsq"}
    base = detect_variant({"model_version": "base"})
    assert not base.is_turbo and base.uses_guidance
    assert {"lego", "extract", "complete", "cover-nofsq"} <= base.supported_tasks
    assert detect_variant({"model_version": "sft"}).name == "sft"
    assert not turbo.is_xl
    assert detect_variant({"is_turbo": True, "hidden_size": 2560}).is_xl
    assert detect_variant({}, "acestep-v15-xl-base").is_xl


def test_resolved_variants(upstream_base: Path, diffusers_base: Path) -> None:
    up = resolve(upstream_base)
    assert (up.layout, up.dit_name, up.variant.name) == ("upstream", UPSTREAM_DIT, "base")
    assert up.dit_config["model_version"] == "base"
    df = resolve(diffusers_base)
    assert (df.layout, df.variant.name) == ("diffusers", "base")
    assert df.dit_dir == diffusers_base and df.tokenizer_dir == diffusers_base / "tokenizer"


# --------------------------------------------------------------------------- tiny checkpoint determinism


def test_same_seed_gives_identical_bytes(upstream_base: Path, tmp_path: Path) -> None:
    again = make_tiny_checkpoint(tmp_path / "again", layout="upstream", variant="base", seed=0)
    first, second = _tree_hashes(upstream_base), _tree_hashes(again)
    assert f"{UPSTREAM_DIT}/model.safetensors" in first
    assert f"{UPSTREAM_DIT}/silence_latent.pt" in first
    assert "vae/diffusion_pytorch_model.safetensors" in first
    assert "Qwen3-Embedding-0.6B/model.safetensors" in first
    assert first == second


def test_different_seed_gives_different_weights(upstream_base: Path, tmp_path: Path) -> None:
    other = make_tiny_checkpoint(tmp_path / "other", layout="upstream", variant="base", seed=1)
    for rel in (
        f"{UPSTREAM_DIT}/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "Qwen3-Embedding-0.6B/model.safetensors",
    ):
        a, b = load_file(str(upstream_base / rel)), load_file(str(other / rel))
        assert sorted(a) == sorted(b), rel
        same = [k for k in a if torch.equal(a[k], b[k])]
        assert not same, f"{rel}: tensors equal across seeds: {same[:5]}"
    silence_a = torch.load(upstream_base / UPSTREAM_DIT / "silence_latent.pt", weights_only=True)
    silence_b = torch.load(other / UPSTREAM_DIT / "silence_latent.pt", weights_only=True)
    assert not torch.equal(silence_a, silence_b)
    # Same configs: only the values changed.
    config = f"{UPSTREAM_DIT}/config.json"
    assert (upstream_base / config).read_text() == (other / config).read_text()


def test_make_tiny_checkpoint_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        make_tiny_checkpoint(tmp_path / "x", layout="onnx")
    with pytest.raises(ValueError, match="variant"):
        tiny_dit_config("xl")


# --------------------------------------------------------------------------- upstream key names


def test_upstream_file_has_genuine_upstream_names(upstream_base: Path) -> None:
    keys = set(load_file(str(upstream_base / UPSTREAM_DIT / "model.safetensors")))
    for key in GENUINE_UPSTREAM_KEYS:
        assert key in keys, key
    offenders = [k for k in keys if any(f in k for f in DIFFUSERS_ONLY_FRAGMENTS)]
    assert not offenders, offenders[:5]
    prefixes = tuple(convert.PREFIX_TO_COMPONENT)
    assert all(k.startswith(prefixes) or k == "null_condition_emb" for k in keys)
    assert "silence_latent" not in keys and not any(k.endswith("silence_latent") for k in keys)


def test_diffusers_files_have_diffusers_names(diffusers_base: Path) -> None:
    keys = set(load_file(str(diffusers_base / "transformer" / "diffusion_pytorch_model.safetensors")))
    assert "layers.0.self_attn.to_q.weight" in keys
    assert "proj_in_conv.weight" in keys
    assert not any(".q_proj." in k or k.startswith("decoder.") for k in keys)
    encoder_file = diffusers_base / "condition_encoder" / "diffusion_pytorch_model.safetensors"
    encoder = set(load_file(str(encoder_file)))
    for key in ("null_condition_emb", "silence_latent", "lyric_encoder.layers.0.self_attn.norm_q.weight"):
        assert key in encoder, key


# --------------------------------------------------------------------------- resolving the DiT


def test_dit_folder_and_root_with_dit_resolve_alike(upstream_base: Path) -> None:
    direct = resolve(upstream_base / UPSTREAM_DIT)
    named = resolve(upstream_base, dit=UPSTREAM_DIT)
    default = resolve(upstream_base)
    assert direct == named == default
    assert direct.root == upstream_base and direct.dit_dir == upstream_base / UPSTREAM_DIT
    assert direct.vae_dir == upstream_base / "vae"
    assert direct.text_encoder_dir == upstream_base / "Qwen3-Embedding-0.6B"
    assert resolve(upstream_base / UPSTREAM_DIT, dit=UPSTREAM_DIT) == direct


def test_dit_folder_loads_directly(upstream_base: Path, engine_upstream_base) -> None:
    engine = AceStep.from_pretrained(upstream_base / UPSTREAM_DIT, device="cpu")
    assert engine.paths.dit_name == UPSTREAM_DIT
    a = engine.components.transformer.state_dict()
    b = engine_upstream_base.components.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_unknown_dit_lists_available(upstream_base: Path) -> None:
    with pytest.raises(CheckpointError) as exc:
        resolve(upstream_base, dit="acestep-v15-sft")
    assert "acestep-v15-sft" in str(exc.value) and UPSTREAM_DIT in str(exc.value)


def test_dit_folder_with_conflicting_dit(upstream_base: Path) -> None:
    with pytest.raises(CheckpointError, match="acestep-v15-turbo"):
        resolve(upstream_base / UPSTREAM_DIT, dit="acestep-v15-turbo")


def _fake_turbo_dit(root: Path) -> None:
    """A second DiT folder in the root: the base weights with a turbo config (same architecture)."""
    turbo = root / "acestep-v15-turbo"
    shutil.copytree(root / UPSTREAM_DIT, turbo)
    (turbo / "config.json").write_text(json.dumps(tiny_dit_config("turbo")))


def test_root_default_prefers_turbo(upstream_base: Path, tmp_path: Path) -> None:
    root = _copy(upstream_base, tmp_path)
    _fake_turbo_dit(root)
    assert list_dits(root) == [UPSTREAM_DIT, "acestep-v15-turbo"]
    chosen = resolve(root)
    assert chosen.dit_name == "acestep-v15-turbo" and chosen.variant.name == "turbo"
    asked = resolve(root, dit=UPSTREAM_DIT)
    assert asked.dit_name == UPSTREAM_DIT and asked.variant.name == "base"
    engine = AceStep.from_pretrained(root, dit=UPSTREAM_DIT, device="cpu")
    assert engine.variant.name == "base"


def test_default_dit_choice(tmp_path: Path) -> None:
    for name in ("acestep-v15-sft", "acestep-v15-base", "acestep-v15-xl-base"):
        (tmp_path / name).mkdir()
    (tmp_path / "acestep-v15-aaa.txt").write_text("a file, not a DiT folder")
    (tmp_path / "vae").mkdir()
    assert list_dits(tmp_path) == ["acestep-v15-base", "acestep-v15-sft", "acestep-v15-xl-base"]
    assert default_dit(tmp_path) == "acestep-v15-base"  # alphabetical first without turbo
    (tmp_path / "acestep-v15-turbo").mkdir()
    assert default_dit(tmp_path) == "acestep-v15-turbo"
    with pytest.raises(CheckpointError, match="acestep-v15-"):
        default_dit(tmp_path / "vae")


def test_config_path_env_names_dit(monkeypatch: pytest.MonkeyPatch) -> None:
    from acestep import settings

    monkeypatch.delenv("ACESTEP_CONFIG_PATH", raising=False)
    assert settings.dit_name() is None
    monkeypatch.setenv("ACESTEP_CONFIG_PATH", "acestep-v15-base")
    assert settings.dit_name() == "acestep-v15-base"
    monkeypatch.setenv("ACESTEP_CONFIG_PATH", "")
    assert settings.dit_name() is None


# --------------------------------------------------------------------------- conversion


def test_split_join_round_trip(upstream_base: Path) -> None:
    state = load_file(str(upstream_base / UPSTREAM_DIT / "model.safetensors"))
    parts = convert.split_upstream_state_dict(state)
    assert parts.pop("unknown") == {}
    assert set(parts) == set(convert.PREFIX_TO_COMPONENT.values())
    assert parts["transformer"]["proj_in_conv.weight"] is state["decoder.proj_in.1.weight"]
    o_proj = state["decoder.layers.0.self_attn.o_proj.weight"]
    assert parts["transformer"]["layers.0.self_attn.to_out.0.weight"] is o_proj
    assert parts["condition_encoder"]["null_condition_emb"] is state["null_condition_emb"]
    assert "lyric_encoder.layers.0.self_attn.norm_q.weight" in parts["condition_encoder"]
    assert "special_tokens" in parts["audio_token_detokenizer"]
    assert sum(len(p) for p in parts.values()) == len(state)
    joined = convert.join_to_upstream_state_dict(parts)
    assert sorted(joined) == sorted(state)
    assert all(joined[k] is state[k] for k in state)


def test_join_matches_module_state_dicts(engine_diffusers_base, upstream_base: Path) -> None:
    """Diffusers module state dicts join to exactly the upstream file (silence_latent excluded)."""
    comps = engine_diffusers_base.components
    parts = {name: getattr(comps, name).state_dict() for name in convert.PREFIX_TO_COMPONENT.values()}
    joined = convert.join_to_upstream_state_dict(parts)
    state = load_file(str(upstream_base / UPSTREAM_DIT / "model.safetensors"))
    assert sorted(joined) == sorted(state)
    assert all(torch.equal(joined[k], state[k]) for k in state)


def test_split_drops_stray_fsq_keys_and_collects_unknown() -> None:
    t = torch.zeros(1)
    parts = convert.split_upstream_state_dict(
        {
            "tokenizer.quantizer.layers.0._levels": t,
            "tokenizer.quantizer.layers.0._basis": t,
            "tokenizer.quantizer._levels": t,
            "tokenizer.quantizer.project_in.weight": t,
            "mystery.weight": t,
            "decoder.proj_out.1.bias": t,
        }
    )
    assert parts["audio_tokenizer"] == {"quantizer.project_in.weight": t}
    assert parts["unknown"] == {"mystery.weight": t}
    assert parts["transformer"] == {"proj_out_conv.bias": t}
    joined = convert.join_to_upstream_state_dict({k: v for k, v in parts.items() if k != "unknown"})
    assert set(joined) == {"tokenizer.quantizer.project_in.weight", "decoder.proj_out.1.bias"}


@pytest.mark.parametrize(
    ("component", "key", "upstream"),
    [
        ("transformer", "layers.3.cross_attn.to_out.0.weight", "decoder.layers.3.cross_attn.o_proj.weight"),
        ("transformer", "proj_in_conv.bias", "decoder.proj_in.1.bias"),
        ("condition_encoder", "null_condition_emb", "null_condition_emb"),
        (
            "condition_encoder",
            "timbre_encoder.layers.1.self_attn.norm_k.weight",
            "encoder.timbre_encoder.layers.1.self_attn.k_norm.weight",
        ),
        (
            "audio_tokenizer",
            "attention_pooler.layers.0.self_attn.to_v.weight",
            "tokenizer.attention_pooler.layers.0.self_attn.v_proj.weight",
        ),
        ("audio_token_detokenizer", "special_tokens", "detokenizer.special_tokens"),
    ],
)
def test_upstream_key(component: str, key: str, upstream: str) -> None:
    assert convert.upstream_key(component, key) == upstream
    back = convert.split_upstream_state_dict({upstream: torch.zeros(1)})
    assert key in back[component]


def test_component_configs_from_tiny_config() -> None:
    cfg = tiny_dit_config("turbo")
    configs = convert.component_configs(cfg)
    assert set(configs) == set(convert.PREFIX_TO_COMPONENT.values())
    assert configs["transformer"]["is_turbo"] is True
    assert configs["transformer"]["sliding_window"] == cfg["sliding_window"]
    assert configs["condition_encoder"]["timbre_hidden_dim"] == cfg["timbre_hidden_dim"]
    assert configs["audio_tokenizer"]["fsq_input_levels"] == cfg["fsq_input_levels"]
    no_window = convert.component_configs(dict(cfg, use_sliding_window=False))
    assert no_window["transformer"]["sliding_window"] is None
