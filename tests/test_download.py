"""``acestep-download``: upstream's flags, what it fetches and skips, ``--list``, and ``--missing``
(the Docker images' first start), in both layouts.

No hub here: a download that is needed fails offline (HF_HUB_OFFLINE=1), and the tests check the
failure is reported as such; everything before the network call is real. Where a test must see
what would be asked of the hub, ``snapshot_download`` is replaced by :class:`LocalHub`, which
serves each repo from a local folder of tiny random weights (``tests/_hub.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _hub import LocalHub

from acestep.checkpoints.download import download, missing_models, presence, repo_for
from acestep.checkpoints.registry import KNOWN_MODELS, MAIN_REPO, SEPARATE_REPOS
from acestep.cli import download_main
from acestep.cli.download import _download_parser
from acestep.testing import make_tiny_lm


@pytest.fixture(scope="module")
def hub_repos(upstream_turbo: Path, upstream_base: Path, tmp_path_factory) -> dict[str, Path]:
    """The main repo (turbo DiT, VAE, text encoder, 1.7B LM) and every separate repo, tiny."""
    main = tmp_path_factory.mktemp("hub") / "main"
    shutil.copytree(upstream_turbo, main)
    make_tiny_lm(main)
    separate = {f"ACE-Step/{name}": upstream_base / "acestep-v15-base" for name in SEPARATE_REPOS}
    return {MAIN_REPO: main} | separate


@pytest.fixture
def hub(hub_repos, monkeypatch) -> LocalHub:
    import huggingface_hub

    fake = LocalHub(hub_repos)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


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


def test_main_repo_folders_fetch_only_themselves(hub: LocalHub, tmp_path: Path):
    download("vae", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]
    download("main", tmp_path)
    download("acestep-v15-base", tmp_path)
    calls = hub.calls
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


def test_no_model_fetches_the_main_repo_once(hub: LocalHub, tmp_path: Path, capsys):
    root = tmp_path / "checkpoints"
    assert download_main(["-d", str(root)]) == 0
    assert hub.asked() == [(MAIN_REPO, False)] and presence(root, "main").complete
    assert f"try: acestep generate --checkpoint {root} --caption" in capsys.readouterr().out
    assert download_main(["--dir", str(root)]) == 0  # complete: nothing asked of the hub
    assert hub.asked() == [(MAIN_REPO, False)] and "main: already complete" in capsys.readouterr().out
    assert download_main(["-d", str(root), "-f"]) == 0
    assert hub.asked()[-1] == (MAIN_REPO, True)


def test_a_separate_model_fetches_the_main_repo_first(hub: LocalHub, tmp_path: Path, capsys):
    """What the README's base-model examples need: one command, then the DiT resolves."""
    from acestep.checkpoints import resolve

    root = tmp_path / "checkpoints"
    assert download_main(["-m", "acestep-v15-base", "-d", str(root)]) == 0
    assert hub.asked() == [(MAIN_REPO, False), ("ACE-Step/acestep-v15-base", False)]
    assert hub.calls[1]["local_dir"] == str(root / "acestep-v15-base")
    assert resolve(root, "acestep-v15-base").variant.name == "base"
    assert f"--checkpoint {root} --dit acestep-v15-base" in capsys.readouterr().out
    # --force fetches the model again, not the complete main repo it depends on.
    assert download_main(["-m", "acestep-v15-base", "-d", str(root), "--force"]) == 0
    assert hub.asked()[2:] == [("ACE-Step/acestep-v15-base", True)]


def test_skip_main_and_the_xl_models(hub: LocalHub, tmp_path: Path):
    root = tmp_path / "checkpoints"
    assert download_main(["--model", "acestep-v15-xl-turbo", "--dir", str(root), "--skip-main"]) == 0
    assert hub.asked() == [("ACE-Step/acestep-v15-xl-turbo", False)]
    assert not (root / "vae").exists() and presence(root, "acestep-v15-xl-turbo").complete


def test_all_fetches_every_known_repo(hub: LocalHub, tmp_path: Path):
    assert download_main(["-a", "-d", str(tmp_path), "-t", "hf_secret"]) == 0
    assert [repo for repo, _ in hub.asked()] == [MAIN_REPO, *(f"ACE-Step/{n}" for n in SEPARATE_REPOS)]
    assert {call["token"] for call in hub.calls} == {"hf_secret"}
    assert all(presence(tmp_path, model).complete for model in KNOWN_MODELS)


def test_an_unknown_model_is_exit_1_and_asks_nothing(hub: LocalHub, tmp_path: Path, capsys):
    assert download_main(["-m", "acestep-v15-huge", "-d", str(tmp_path)]) == 1
    assert "unknown model 'acestep-v15-huge'" in capsys.readouterr().err and hub.calls == []


def test_offline_the_first_failure_stops_and_is_exit_1(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["-m", "acestep-v15-base", "-d", str(tmp_path), "--download-source", "modelscope"]
    assert download_main(args) == 1
    out, err = capsys.readouterr()
    assert "download of 'main' failed" in err and "not downloaded: main" in err
    assert "acestep-v15-base: downloading" not in out  # its prerequisite failed: not attempted
    assert "ModelScope is not supported" in err  # the upstream flag is accepted, and says so


def test_list_marks_what_is_present_with_sizes(upstream_base: Path, tmp_path: Path, capsys):
    root = tmp_path / "checkpoints"
    shutil.copytree(upstream_base, root)
    (root / "Qwen3-Embedding-0.6B" / "model.safetensors").unlink()  # an interrupted download
    (root / "acestep-v15-base" / "README.md").write_bytes(b"x" * 3_000_000)  # counted: size on disk
    assert download_main(["-l", "-d", str(root)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert list(rows) == list(KNOWN_MODELS)
    base_bytes = sum(p.stat().st_size for p in (root / "acestep-v15-base").iterdir())
    assert rows["acestep-v15-base"].split()[1:4] == ["present", f"{base_bytes / 1e6:.1f}", "MB"]
    assert "ACE-Step/acestep-v15-base" in rows["acestep-v15-base"]
    assert "lego" in rows["acestep-v15-base"] and "lego" not in rows["acestep-v15-xl-turbo"]
    assert rows["Qwen3-Embedding-0.6B"].split()[1] == "partial"
    assert rows["main"].split()[1] == "partial"  # no turbo DiT, no LM
    for xl in ("acestep-v15-xl-base", "acestep-v15-xl-sft", "acestep-v15-xl-turbo"):
        assert rows[xl].split()[1:3] == ["-", f"ACE-Step/{xl}"]


def test_every_flag_has_help_and_version_works(capsys):
    parser = _download_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert {"-m", "-a", "-l", "-d", "-f", "-t", "--skip-main", "--download-source", "--missing"} <= flags
    assert all(action.help for action in parser._actions)
    with pytest.raises(SystemExit) as done:
        download_main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("acestep-download ")
