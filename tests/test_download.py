"""What ``acestep-download --missing`` (the Docker images' first start) would fetch, in both layouts.

No hub here: a download that is needed fails offline (HF_HUB_OFFLINE=1), and the test checks the
failure is reported as such; everything before the network call is real. One test replaces
``snapshot_download`` to see what would be asked of the hub.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from acestep.checkpoints.download import download, missing_models, repo_for
from acestep.cli import download_main
from acestep.testing import make_tiny_lm


def test_a_complete_upstream_root_needs_nothing(upstream_base: Path):
    assert missing_models(upstream_base, "acestep-v15-base") == []


def test_a_diffusers_folder_is_never_fetched(diffusers_base: Path):
    assert missing_models(diffusers_base, "acestep-v15-base") == []
    assert missing_models(diffusers_base, None, with_lm=True) == ["acestep-5Hz-lm-1.7B"]


def test_each_missing_part_is_named(upstream_base: Path, tmp_path: Path):
    root = tmp_path / "checkpoints"
    shutil.copytree(upstream_base, root)
    shutil.rmtree(root / "vae")
    assert missing_models(root, "acestep-v15-base") == ["vae"]
    # Another DiT, the default DiT and the LM are named by what the settings ask for.
    assert missing_models(root, "acestep-v15-sft") == ["acestep-v15-sft", "vae"]
    assert missing_models(root, None) == ["acestep-v15-turbo", "vae"]
    assert missing_models(root, "acestep-v15-base", "acestep-5Hz-lm-4B", with_lm=True) == [
        "vae",
        "acestep-5Hz-lm-4B",
    ]
    make_tiny_lm(root / "acestep-5Hz-lm-4B")
    assert missing_models(root, "acestep-v15-base", "acestep-5Hz-lm-4B", with_lm=True) == ["vae"]
    assert missing_models(root, "acestep-v15-base", None, with_lm=True) == ["vae"]  # any LM found


def test_an_interrupted_download_counts_as_missing(upstream_base: Path, tmp_path: Path):
    """snapshot_download writes config.json before the weights; a restart must fetch (resume) again."""
    root = tmp_path / "checkpoints"
    shutil.copytree(upstream_base, root)
    (root / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (root / "acestep-v15-base" / "silence_latent.pt").unlink()
    assert missing_models(root, "acestep-v15-base") == ["acestep-v15-base", "vae"]
    lm = make_tiny_lm(root / "acestep-5Hz-lm-4B")
    (lm / "model.safetensors").rename(lm / "model-00001-of-00002.safetensors")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (lm / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    assert "acestep-5Hz-lm-4B" in missing_models(root, "acestep-v15-base", "acestep-5Hz-lm-4B", with_lm=True)
    (lm / "model-00002-of-00002.safetensors").write_bytes(b"")
    assert "acestep-5Hz-lm-4B" not in missing_models(
        root, "acestep-v15-base", "acestep-5Hz-lm-4B", with_lm=True
    )


def test_main_repo_folders_fetch_only_themselves(tmp_path: Path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: calls.append(kwargs))
    download("vae", tmp_path)
    download("main", tmp_path)
    download("acestep-v15-base", tmp_path)
    assert [(c["repo_id"], c["allow_patterns"]) for c in calls] == [
        ("ACE-Step/Ace-Step1.5", ["vae/*"]),
        ("ACE-Step/Ace-Step1.5", None),
        ("ACE-Step/acestep-v15-base", None),
    ]
    assert calls[0]["local_dir"] == str(tmp_path) and calls[2]["local_dir"] == str(
        tmp_path / "acestep-v15-base"
    )
    assert repo_for("vae") == ("ACE-Step/Ace-Step1.5", None)


def test_cli_missing_with_everything_present(upstream_base: Path, monkeypatch, capsys):
    monkeypatch.setenv("ACESTEP_CONFIG_PATH", "acestep-v15-base")
    monkeypatch.setenv("ACESTEP_INIT_LLM", "false")
    assert download_main(["--missing", "--dir", str(upstream_base)]) == 0
    assert f"all models are in {upstream_base}" in capsys.readouterr().out


def test_cli_missing_offline_reports_the_failed_download(upstream_base: Path, monkeypatch, capsys):
    monkeypatch.setenv("ACESTEP_CONFIG_PATH", "acestep-v15-base")
    monkeypatch.setenv("ACESTEP_INIT_LLM", "true")
    monkeypatch.setenv("ACESTEP_LM_MODEL_PATH", "acestep-5Hz-lm-0.6B")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_main(["--missing", "--dir", str(upstream_base)]) == 1
    out, err = capsys.readouterr()
    assert "downloading acestep-5Hz-lm-0.6B" in out
    assert "download of 'acestep-5Hz-lm-0.6B' failed" in err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ACESTEP_CONFIG_PATH": "my-own-dit"}, "my-own-dit missing from"),
        ({"ACESTEP_INIT_LLM": "maybe"}, "ACESTEP_INIT_LLM must be true/false/auto"),
    ],
)
def test_cli_missing_refuses_what_it_cannot_do(upstream_base, monkeypatch, capsys, env, message):
    monkeypatch.delenv("ACESTEP_INIT_LLM", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert download_main(["--missing", "--dir", str(upstream_base)]) == 2
    assert message in capsys.readouterr().err
