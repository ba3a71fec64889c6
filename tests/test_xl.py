"""The 4B XL DiTs as first-class models: a tiny XL-shaped checkpoint loads and generates; the
downloader fetches the three XL repos; tiers and plans say where XL fits and refuse where it does
not; LoRA adapters are checked between 2B and XL; stem SFT (``is_lego_sft``) captions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from _hub import LocalHub

from acestep import AceStep
from acestep.checkpoints import resolve
from acestep.checkpoints.download import presence
from acestep.checkpoints.layout import CheckpointError
from acestep.checkpoints.loading import dit_weights, read_weights
from acestep.checkpoints.registry import KNOWN_MODELS, MAIN_REPO, XL_DITS, download_command, repo_for
from acestep.checkpoints.task_support import TaskNotSupported, require_task
from acestep.checkpoints.variants import detect_variant, is_xl_name
from acestep.cli import download_main
from acestep.engine.prompts import dit_caption
from acestep.lora.catalog import LoraError
from acestep.request import GenerationRequest
from acestep.testing import make_tiny_checkpoint, make_tiny_lora, tiny_dit_config

XL_TURBO = "acestep-v15-xl-turbo"


@pytest.fixture(scope="module")
def xl_root(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("xl"), variant="xl-turbo", seed=0)


@pytest.fixture(scope="module")
def xl_engine(xl_root: Path) -> AceStep:
    return AceStep.from_pretrained(xl_root, device="cpu")


# --------------------------------------------------------------------------- the tiny checkpoint


def test_the_tiny_xl_checkpoint_has_xls_shape(xl_root: Path):
    paths = resolve(xl_root)
    assert paths.dit_name == XL_TURBO and paths.variant.is_xl and paths.variant.tag == "xl-turbo"
    config = json.loads((xl_root / XL_TURBO / "config.json").read_text())
    # Separate encoder widths, as upstream's XL configs carry them (2560 DiT vs 2048 encoder).
    assert config["encoder_hidden_size"] < config["hidden_size"] > tiny_dit_config("turbo")["hidden_size"]
    assert config["encoder_intermediate_size"] != config["intermediate_size"]
    assert config["encoder_num_attention_heads"] != config["num_attention_heads"]
    assert config["num_hidden_layers"] > tiny_dit_config("turbo")["num_hidden_layers"]


def test_the_tiny_xl_loads_with_its_own_widths_and_generates(xl_engine: AceStep, tmp_path: Path):
    config = json.loads((xl_engine.paths.dit_dir / "config.json").read_text())
    transformer, encoder = xl_engine.components.transformer, xl_engine.components.condition_encoder
    assert transformer.config.hidden_size == config["hidden_size"]
    assert encoder.config.hidden_size == config["encoder_hidden_size"]
    assert len(transformer.layers) == config["num_hidden_layers"]
    request = GenerationRequest(caption="warm piano", audio_duration=3.0, seed=3, batch_size=1)
    result = xl_engine.generate(request, tmp_path)
    audio, rate = sf.read(result.audio_paths[0], dtype="float32", always_2d=True)
    assert rate == 48000 and audio.shape == (3 * 48000, 2)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.5


def test_an_xl_turbo_sends_lego_to_the_xl_base(xl_root: Path):
    with pytest.raises(TaskNotSupported, match="acestep-v15-xl-base") as caught:
        require_task(resolve(xl_root), "lego")
    assert "acestep-v15-base " not in str(caught.value)  # a 2B base is not the same model size


def test_xl_is_a_token_of_the_name_or_a_wide_config():
    assert all(is_xl_name(name) and detect_variant({}, name).is_xl for name in XL_DITS)
    assert not is_xl_name("acestep-v15-excellent") and not detect_variant({}, "my-xlarge-copy").is_xl
    assert detect_variant({"hidden_size": 2560, "model_version": "sft"}).tag == "xl-sft"


# --------------------------------------------------------------------------- sharded weights


def test_sharded_weights_read_as_one_file(tmp_path: Path, xl_root: Path):
    sharded = make_tiny_checkpoint(tmp_path / "sharded", variant="xl-turbo", seed=0, shards=3)
    folder = sharded / XL_TURBO
    assert len(list(folder.glob("model-0000*-of-00003.safetensors"))) == 3
    assert dit_weights(folder).name == "model.safetensors.index.json"
    joined = read_weights(dit_weights(folder))
    single = read_weights(xl_root / XL_TURBO / "model.safetensors")
    assert joined.keys() == single.keys() and all(torch.equal(joined[k], single[k]) for k in single)
    assert presence(sharded, XL_TURBO).complete
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weight shard .*model-00002-of-00003"):
        read_weights(dit_weights(folder))
    assert not presence(sharded, XL_TURBO).complete


def test_a_sharded_xl_folder_loads(tmp_path: Path, xl_engine: AceStep):
    sharded = make_tiny_checkpoint(tmp_path / "sharded", variant="xl-turbo", seed=0, shards=4)
    engine = AceStep.from_pretrained(sharded, device="cpu")
    mine, theirs = engine.components.transformer.state_dict(), xl_engine.components.transformer.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


# --------------------------------------------------------------------------- the downloader


def test_the_registry_knows_the_three_xl_repos(tmp_path: Path):
    assert XL_DITS == ("acestep-v15-xl-base", "acestep-v15-xl-sft", "acestep-v15-xl-turbo")
    for name in XL_DITS:
        assert name in KNOWN_MODELS and repo_for(name) == (f"ACE-Step/{name}", name)
        assert download_command(name, tmp_path) == f"acestep-download --model {name} --dir {tmp_path}"


def test_acestep_download_fetches_an_xl_model_that_then_resolves(
    upstream_turbo: Path, xl_root: Path, tmp_path: Path, monkeypatch, capsys
):
    import huggingface_hub

    sharded = make_tiny_checkpoint(tmp_path / "sharded", variant="xl-turbo", seed=0, shards=2)
    hub = LocalHub(
        {
            MAIN_REPO: upstream_turbo,
            "ACE-Step/acestep-v15-xl-turbo": xl_root / XL_TURBO,
            "ACE-Step/acestep-v15-xl-base": sharded / XL_TURBO,
        }
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    root = tmp_path / "checkpoints"
    assert download_main(["--model", XL_TURBO, "--dir", str(root)]) == 0
    assert hub.asked() == [(MAIN_REPO, False), (f"ACE-Step/{XL_TURBO}", False)]
    assert hub.calls[1]["local_dir"] == str(root / XL_TURBO)
    assert f"--dit {XL_TURBO}" in capsys.readouterr().out
    assert resolve(root, XL_TURBO).variant.tag == "xl-turbo"
    # The XL repos ship shards; a complete sharded folder is "present", not fetched again.
    assert download_main(["-m", "acestep-v15-xl-base", "-d", str(root), "--skip-main"]) == 0
    assert presence(root, "acestep-v15-xl-base").complete
    assert download_main(["-m", "acestep-v15-xl-base", "-d", str(root), "--skip-main"]) == 0
    assert len(hub.calls) == 3 and "acestep-v15-xl-base: already complete" in capsys.readouterr().out
    assert download_main(["--list", "--dir", str(root)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[XL_TURBO].split()[1] == "present" and "XL turbo DiT (4B" in rows[XL_TURBO]
    assert "XL sft DiT" in rows["acestep-v15-xl-sft"] and rows["acestep-v15-xl-sft"].split()[1] == "-"


# --------------------------------------------------------------------------- LoRA across sizes


def test_a_2b_adapter_is_refused_on_an_xl_dit(xl_engine: AceStep, tmp_path: Path):
    make_tiny_lora(tmp_path / "two_b", variant="turbo")
    make_tiny_lora(tmp_path / "two_b_bare", variant="turbo", record_variant=False)
    make_tiny_lora(tmp_path / "xl_own", variant="xl-turbo", seed=2)
    xl_engine.adapters.directory = tmp_path
    try:
        with pytest.raises(LoraError, match="a 2B adapter on an XL DiT"):
            xl_engine.adapters.load(["two_b"])
        with pytest.raises(LoraError, match="made for another DiT.*xl-turbo"):
            xl_engine.adapters.load(["two_b_bare"])  # records nothing: its shapes tell
        assert xl_engine.adapters.load(["xl_own"]) == ["xl_own"]
    finally:
        xl_engine.adapters.unload()


def test_an_xl_adapter_is_refused_on_a_2b_dit(engine_upstream_turbo: AceStep, tmp_path: Path):
    make_tiny_lora(tmp_path / "xl", variant="xl-turbo")
    make_tiny_lora(tmp_path / "xl_bare", variant="xl-turbo", record_variant=False)
    adapters = engine_upstream_turbo.adapters
    old, adapters.directory = adapters.directory, tmp_path
    try:
        with pytest.raises(LoraError, match="an XL adapter on a 2B DiT"):
            adapters.load(["xl"])
        with pytest.raises(LoraError, match="another DiT|does not have"):
            adapters.load(["xl_bare"])
        assert not adapters.loaded
    finally:
        adapters.directory = old


# --------------------------------------------------------------------------- stem SFT captions


def test_a_lego_sft_config_marks_the_variant(tmp_path: Path, xl_root: Path):
    root = tmp_path / "ckpt"
    shutil.copytree(xl_root, root)
    stems = root / "acestep-v15-xl-sft-stems"
    (root / XL_TURBO).rename(stems)
    config = json.loads((stems / "config.json").read_text())
    config |= {"is_lego_sft": True, "is_turbo": False, "model_version": "sft"}
    (stems / "config.json").write_text(json.dumps(config))
    variant = resolve(root, stems.name).variant
    assert variant.is_lego_sft and variant.name == "sft" and variant.is_xl
    assert not detect_variant({"is_lego_sft": False}).is_lego_sft
    assert not resolve(xl_root).variant.is_lego_sft


def test_the_stem_caption_block():
    instruction = "Generate the drums track based on the audio context:"
    assert dit_caption("tight drums", "a funk song", instruction, False, True) == "tight drums"
    assert dit_caption("tight drums", "a funk song", instruction, True, False) == (
        "Global: a funk song\nLocal: tight drums\nMask Control: false"
    )
    assert dit_caption("tight drums", "", instruction, True, True) == (
        "Global: \nLocal: tight drums\nMask Control: true"
    )
    segment = "Generate a segment of the drums track based on the audio context:"
    assert dit_caption("tight drums", "a funk song", segment, True, True) == (
        "Local: tight drums\nMask Control: true"
    )
