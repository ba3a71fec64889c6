"""What ``acestep-download --missing`` (the Docker images' first start) would fetch, in both layouts.

No hub here: a download that is needed fails offline (HF_HUB_OFFLINE=1), and the test checks the
failure is reported as such; everything before the network call is real.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from acestep.checkpoints.download import missing_models, repo_for
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


def test_main_repo_folders_fetch_only_themselves():
    assert repo_for("vae") == ("ACE-Step/Ace-Step1.5", None)
    assert repo_for("acestep-v15-base") == ("ACE-Step/acestep-v15-base", "acestep-v15-base")


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
