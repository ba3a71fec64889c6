"""``acestep generate --lora`` and ``acestep loras``, run in process (as the console script does)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep import cli
from acestep.testing import make_tiny_lora


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli_loras")
    make_tiny_lora(folder / "drums", layout="diffusers", variant="base", rank=4, seed=1)
    make_tiny_lora(folder / "fast", layout="peft", variant="turbo", rank=2, seed=2)
    (folder / "old.ckpt").write_bytes(b"pickle")
    return folder


@pytest.fixture(autouse=True)
def restored_env(monkeypatch, tmp_path):
    """``--lora-dir`` sets ACESTEP_LORA_DIR in this process; monkeypatch puts it back after."""
    monkeypatch.setenv("ACESTEP_LORA_DIR", str(tmp_path / "no_loras_here"))


def generate(checkpoint: Path, out: Path, capsys, *extra: str) -> tuple[int, dict | str]:
    args = ["generate", "--checkpoint", str(checkpoint), "--seed", "4", "--duration", "3", "--steps", "4",
            "--format", "wav32", "--output-dir", str(out), "--json", *extra]  # fmt: skip
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else captured.err


def test_generate_with_an_adapter_and_without(upstream_base, folder, tmp_path, capsys):
    code, plain = generate(upstream_base, tmp_path / "plain", capsys)
    assert code == 0 and plain["metas"]["lora"] == []
    flags = ("--lora", "drums", "--lora-scale", "0.5", "--lora-dir", str(folder))
    code, adapted = generate(upstream_base, tmp_path / "lora", capsys, *flags)
    assert code == 0 and adapted["metas"]["lora"] == [{"name": "drums", "scale": 0.5}]
    first, second = (sf.read(r["audio_paths"][0], dtype="float32")[0] for r in (plain, adapted))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--lora", "fast"), "trained on the turbo DiT"),
        (("--lora", "ghost"), "no LoRA named 'ghost'"),
        (("--lora", "old"), "pickles"),
        (("--lora", "drums", "--lora-scale", "7"), "between 0 and 4"),
    ],
)
def test_bad_adapters_are_a_message_not_a_traceback(upstream_base, folder, tmp_path, capsys, flags, needle):
    code, err = generate(upstream_base, tmp_path, capsys, *flags, "--lora-dir", str(folder))
    assert code in (1, 2) and needle in err and "Traceback" not in err


def test_loras_lists_the_folder(folder, capsys):
    assert cli.main(["loras", "--lora-dir", str(folder)]) == 0
    out = capsys.readouterr()
    assert "drums  diffusers  base  rank 4" in out.out and "fast  peft  turbo  rank 2" in out.out
    assert "old.ckpt" in out.err and "pickles" in out.err
    assert cli.main(["loras", "--lora-dir", str(folder), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [entry["name"] for entry in listed["loras"]] == ["drums", "fast"]
