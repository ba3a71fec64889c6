"""The console scripts: ``acestep generate`` run for real in a subprocess, plus the other entry points.

``python -m acestep.cli`` (``acestep/cli/__main__.py``) is the ``acestep`` script (``acestep.cli:main``),
so these tests do not depend on the venv's ``bin/acestep`` being installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep import cli
from acestep.testing import tiny_dit_config

SOURCE_FRAMES = 288000  # 6.0 s at 48 kHz (the source_wav fixture)
TIMEOUT_S = 300


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("ACESTEP_CONFIG_PATH", "ACESTEP_CHECKPOINTS_DIR", "ACESTEP_PROJECT_ROOT"):
        env.pop(name, None)
    env["ACESTEP_CACHE_DIR"] = str(cache)
    env["ACESTEP_DEVICE"] = "cpu"
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs must not pick up a developer's ACESTEP_* settings."""
    for name in ("ACESTEP_CONFIG_PATH", "ACESTEP_CHECKPOINTS_DIR", "ACESTEP_PROJECT_ROOT", "ACESTEP_DEVICE"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    workdir: Path


@pytest.fixture(scope="module")
def runs(upstream_base: Path, source_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The subprocess cases, started at once: each spends most of its time importing torch and
    diffusers, so running them side by side keeps this module fast on a 2-core machine. The other
    cases call ``cli.main`` in process (the script is ``raise SystemExit(main())``)."""
    base = tmp_path_factory.mktemp("cli")
    cases = {
        "lego": [
            "--checkpoint",
            str(upstream_base),
            "--task",
            "lego",
            "--track-name",
            "vocals",
            "--src-audio",
            str(source_wav),
            "--seed",
            "3",
            "--steps",
            "4",
            "--format",
            "wav",
            "--json",
        ],
        # Validation comes before loading: the (missing) checkpoint is never touched.
        "bad_bpm": ["--checkpoint", str(base / "nope"), "--bpm", "999"],
    }
    started = {}
    for name, args in cases.items():
        workdir = base / name
        workdir.mkdir()
        command = [sys.executable, "-m", "acestep.cli", "generate", *args]
        command += ["--output-dir", str(workdir / "out")]
        started[name] = (
            workdir,
            subprocess.Popen(
                command,
                cwd=workdir,
                env=_env(workdir / "cache"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    results = {}
    for name, (workdir, proc) in started.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results[name] = Run(proc.returncode, stdout, stderr, workdir)
    return results


def _wavs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.wav"))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- subprocess


def test_generate_lego_writes_aligned_wav(runs: dict[str, Run], source_wav: Path) -> None:
    run = runs["lego"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    wavs = _wavs(run.workdir / "out")
    assert len(wavs) == 1, list((run.workdir / "out").iterdir())
    info = sf.info(str(wavs[0]))
    assert info.samplerate == 48000
    assert info.channels == 2
    assert info.frames == sf.info(str(source_wav)).frames == SOURCE_FRAMES
    audio, _ = sf.read(str(wavs[0]), dtype="float32")
    assert np.isfinite(audio).all()
    peak = float(np.abs(audio).max())
    assert peak == pytest.approx(10 ** (-1 / 20), abs=1e-4)  # peak-normalised to -1 dBFS by default

    result = json.loads(run.stdout)
    assert result["task_type"] == "lego"
    assert result["model"] == "acestep-v15-base" and result["variant"] == "base"
    assert [item["seed"] for item in result["items"]] == [3]
    assert result["items"][0]["path"] == str(wavs[0])
    assert result["metas"]["instruction"] == "Generate the VOCALS track based on the audio context:"
    assert result["metas"]["steps"] == 4


def test_bad_input_exits_2_without_traceback(runs: dict[str, Run]) -> None:
    run = runs["bad_bpm"]
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    errors = _error_lines(run.stderr)
    assert errors, run.stderr
    assert any("bpm" in line and "between 30 and 300" in line and "999" in line for line in errors)
    assert not (run.workdir / "out").exists()


# --------------------------------------------------------------------------- in process


def test_demo_says_it_is_noise(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ACESTEP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["generate", "--demo", "--seed", "0", "--duration", "3", "--steps", "30"]
    assert cli.main([*args, "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Note: turbo runs at most 20 steps; inference_steps=30 was cut" in captured.out
    # Said once, in the summary, with the commands that repeat the job on real weights.
    assert (captured.out + captured.err).count("DEMO MODE") == 1
    assert "RANDOM weights" in captured.out
    assert "noise, not music" in captured.out
    assert "  acestep-download --dir checkpoints" in captured.out  # turbo: the main repo
    assert "  acestep generate --checkpoint checkpoints --duration 3 --seed 0" in captured.out
    # The tiny demo checkpoint was built in the cache dir named by ACESTEP_CACHE_DIR.
    demo_root = tmp_path / "cache" / "acestep" / "demo" / "upstream-turbo"
    assert (demo_root / "acestep-v15-turbo" / "model.safetensors").is_file()
    wavs = _wavs(out)
    assert len(wavs) == 1
    assert f"  {wavs[0]}  (3.00 s, 48000 Hz, seed 0)" in captured.out
    assert "Made 1 file: text2music by acestep-v15-turbo (turbo model)." in captured.out
    info = sf.info(str(wavs[0]))
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 3 * 48000)
    # With --json stdout is the JSON alone, and the notice goes to stderr, still once.
    assert (
        cli.main(["generate", "--demo", "--seed", "0", "--duration", "3", "-o", str(out / "j.wav"), "--json"])
        == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["audio_paths"] == [str(out / "j.wav")]
    assert captured.err.count("DEMO MODE") == 1 and "noise, not music" in captured.err


def test_missing_checkpoint_exits_1(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-checkpoints"
    assert cli.main(["generate", "--checkpoint", str(missing), "--seed", "1"]) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert any("does not exist" in line and str(missing) in line for line in errors), errors


def test_default_checkpoint_dir_from_env(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ACESTEP_CHECKPOINTS_DIR", str(tmp_path / "env-checkpoints"))
    assert cli.main(["generate", "--seed", "1"]) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert any(str(tmp_path / "env-checkpoints") in line for line in errors), errors


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch-size", "9"], "batch_size"),
        (["--task", "lego"], "requires src_audio"),
        (["--task", "lego", "--src-audio", "x.wav", "--audio-codes", "<|audio_code_1|>"], "audio codes"),
        (["--seed", "one"], "seed"),
    ],
)
def test_validation_errors_exit_2(args: list[str], needle: str, tmp_path: Path, capsys) -> None:
    code = cli.main(["generate", "--checkpoint", str(tmp_path / "nope"), *args])
    assert code == 2
    errors = _error_lines(capsys.readouterr().err)
    assert any(needle in line for line in errors), errors


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--time-signature", "5/4"], "--time-signature"),
        (["--task", "remix"], "--task"),
        (["--format", "ogg"], "--format"),
        (["--track-name", "kazoo"], "--track-name"),
        (["--language", "xx"], "--language"),
    ],
)
def test_fixed_value_flags_refuse_other_values(args: list[str], flag: str, tmp_path: Path, capsys) -> None:
    """Flags with fixed values are argparse choices: exit 2 with the choices, before anything runs."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--checkpoint", str(tmp_path / "nope"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "invalid choice" in err, err


def test_missing_source_audio_exits_1(upstream_base: Path, tmp_path: Path, capsys) -> None:
    code = cli.main(
        [
            "generate",
            "--checkpoint",
            str(upstream_base),
            "--device",
            "cpu",
            "--task",
            "lego",
            "--src-audio",
            str(tmp_path / "missing.wav"),
            "--seed",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    errors = _error_lines(capsys.readouterr().err)
    assert any("audio file not found" in line and "missing.wav" in line for line in errors), errors
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_config_path_env_picks_the_dit(upstream_base: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """With two DiTs in the root the default is turbo (test_checkpoints); ACESTEP_CONFIG_PATH overrides it."""
    root = tmp_path / "checkpoints"
    shutil.copytree(upstream_base, root)
    turbo = root / "acestep-v15-turbo"
    shutil.copytree(root / "acestep-v15-base", turbo)  # same architecture, turbo config
    (turbo / "config.json").write_text(json.dumps(tiny_dit_config("turbo")))
    args = [
        "generate",
        "--checkpoint",
        str(root),
        "--device",
        "cpu",
        "--duration",
        "2",
        "--seed",
        "5",
        "--steps",
        "2",
        "--output-dir",
        str(tmp_path / "out"),
        "--json",
    ]

    monkeypatch.setenv("ACESTEP_CONFIG_PATH", "acestep-v15-base")
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["model"], result["variant"]) == ("acestep-v15-base", "base")
    assert result["metas"]["steps"] == 2
    assert [item["seed"] for item in result["items"]] == [5]


def test_ui_refuses_a_missing_checkpoint_and_an_open_public_bind(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("ACESTEP_API_KEY", raising=False)
    monkeypatch.delenv("ACESTEP_AUTH", raising=False)
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("ACESTEP_TMPDIR", str(tmp_path / "acestep-tmp"))
    assert cli.main(["--checkpoint", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["--server-name", "0.0.0.0", "--checkpoint", str(tmp_path)]) == 2
    assert "without an API key" in capsys.readouterr().err


def test_api_refuses_an_open_public_bind_and_a_missing_checkpoint(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("ACESTEP_API_KEY", raising=False)
    monkeypatch.delenv("ACESTEP_AUTH", raising=False)
    for name in ("TMPDIR", "TEMP", "TMP"):  # the server points temporary files at ACESTEP_TMPDIR
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("ACESTEP_TMPDIR", str(tmp_path / "acestep-tmp"))
    assert cli.api_main(["--host", "0.0.0.0", "--checkpoint", str(tmp_path)]) == 2
    assert "without an API key" in capsys.readouterr().err
    assert cli.api_main(["--checkpoint", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_download_list(capsys) -> None:
    assert cli.download_main(["--list"]) == 0
    names = capsys.readouterr().out.split()
    for name in ("main", "acestep-v15-base", "acestep-v15-turbo", "acestep-v15-sft", "vae"):
        assert name in names


def test_download_unknown_model(tmp_path: Path, capsys) -> None:
    assert cli.download_main(["--model", "nope", "--dir", str(tmp_path / "ckpt")]) == 1  # as upstream's
    err = capsys.readouterr().err
    assert err.startswith("error:") and "unknown model 'nope'" in err and "--list" in err
    assert not (tmp_path / "ckpt").exists()


def test_steps_default_to_the_models_own(upstream_base: Path, tmp_path: Path, capsys) -> None:
    """Without --steps a base model runs its 50 steps (the library default of 8 is for turbo)."""
    args = [
        "generate",
        "--checkpoint",
        str(upstream_base),
        "--device",
        "cpu",
        "--duration",
        "2",
        "--seed",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
        "--json",
    ]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["variant"] == "base" and result["metas"]["steps"] == 50


def test_memory_limits_refuse_before_loading(upstream_turbo: Path, tmp_path: Path, capsys) -> None:
    base = ["generate", "--checkpoint", str(upstream_turbo), "--device", "cpu", "--seed", "1"]
    assert cli.main([*base, "--batch-size", "2", "--max-batch-size", "1"]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert any("batch_size 2 is over the maximum of 1" in e and "ACESTEP_MAX_BATCH_SIZE" in e for e in errors)
    assert cli.main([*base, "--duration", "30", "--max-duration", "20"]) == 2
    assert any("over the 20 s maximum" in e for e in _error_lines(capsys.readouterr().err))
    assert cli.main([*base, "--keep-alive", "soon"]) == 2
    assert any("not a duration" in e for e in _error_lines(capsys.readouterr().err))


def test_keep_alive_0_frees_and_reports(upstream_turbo: Path, tmp_path: Path, capsys) -> None:
    args = ["generate", "--checkpoint", str(upstream_turbo), "--device", "cpu", "--duration", "2"]
    args += ["--seed", "3", "--keep-alive", "0", "--offload-to-cpu", "--json", "--output-dir", str(tmp_path)]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seeds"] == [3]
    frees = [r for r in result["memory_reports"] if r["action"] == "free"]
    assert frees and set(frees[0]["residency"].values()) == {"unloaded"} and frees[0]["seconds"] >= 0


def test_memory_command_prints_the_plan(capsys) -> None:
    assert cli.main(["memory", "--device", "cpu", "--max-duration", "90", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["tier"] == "cpu" and status["limits"]["max_duration"] == 90
    assert status["limits"]["origin"]["max_duration"] == "ACESTEP_MAX_DURATION"
    assert cli.main(["memory", "--device", "cpu"]) == 0
    assert "tier cpu" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # a bool-ish flag takes the setting's words only
        cli.main(["memory", "--device", "cpu", "--offload-to-cpu", "sometimes"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err
