"""CLI manners: ``--help``/``--version`` on every console script without a checkpoint, help text and
choices on every flag, ``acestep generate``'s progress bar, ``-o``, its summary and a clean stderr,
and ``.env`` files read by python-dotenv."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import soundfile as sf

import acestep
from acestep import cli
from acestep.cli.memory_flags import BOOL_CHOICES
from acestep.cli.ui import _bool_string
from acestep.serving.config import load_dotenv

# The console scripts as installed (pyproject's [project.scripts]): name -> "module:function".
SCRIPTS = {
    ep.name: ep.value
    for ep in entry_points(group="console_scripts")
    if ep.dist is not None and ep.dist.name == "acestep"
}
TIMEOUT_S = 300


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs must not pick up a developer's ACESTEP_* settings."""
    for name in ("ACESTEP_CONFIG_PATH", "ACESTEP_CHECKPOINTS_DIR", "ACESTEP_PROJECT_ROOT", "ACESTEP_DEVICE"):
        monkeypatch.delenv(name, raising=False)


def _script_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACESTEP_")}
    env |= {
        "ACESTEP_CHECKPOINTS_DIR": str(home / "no-such-checkpoints"),
        "ACESTEP_CACHE_DIR": str(home / "cache"),
        "ACESTEP_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    return env


def _command(script: str) -> list[str]:
    """The installed entry point when the venv has it, else the same function through python."""
    installed = Path(sys.executable).parent / script
    if installed.is_file():
        return [str(installed)]
    module, _, function = SCRIPTS[script].partition(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function} as f; sys.exit(f())"]


# --------------------------------------------------------------------------- --help and --version


def test_every_console_script_answers_help_and_version_without_a_checkpoint(tmp_path: Path) -> None:
    """In an empty folder, with ACESTEP_CHECKPOINTS_DIR naming nothing: exit 0, the usage or the
    version on stdout, nothing on stderr, nothing created."""
    assert {"acestep", "acestep-api", "acestep-download", "acestep-worker", "acestep-mcp"} <= set(SCRIPTS)
    workdir = tmp_path / "empty"
    workdir.mkdir()
    started = {
        (script, flag): subprocess.Popen(
            [*_command(script), flag],
            cwd=workdir,
            env=_script_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in SCRIPTS
        for flag in ("--help", "--version")
    }
    for (script, flag), proc in started.items():
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 0, (script, flag, stderr)
        assert stderr == "", (script, flag, stderr)
        if flag == "--help":
            assert stdout.startswith(f"usage: {script} "), (script, stdout[:200])
        else:
            assert stdout.strip() == f"{script} {acestep.__version__}", (script, stdout)
    assert list(workdir.iterdir()) == []
    assert not (tmp_path / "no-such-checkpoints").exists()


# --------------------------------------------------------------------------- help texts and choices


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _parser_of(script: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a console script builds: its function runs until it parses its arguments."""

    def capture(self, args=None, namespace=None):
        raise _Built(self)

    module, _, function = SCRIPTS[script].partition(":")
    entry = getattr(importlib.import_module(module), function)
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(_Built) as built:
            entry([])
    return built.value.parser


def _walk(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from _walk(sub, f"{name} {command}")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_flag_has_help_and_shows_its_choices(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parsers = list(_walk(_parser_of(script, monkeypatch), script))
    assert parsers
    for name, parser in parsers:
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or isinstance(
                action, (argparse._HelpAction, argparse._VersionAction)
            ):
                continue
            flag = f"{name} {action.option_strings[-1]}"
            assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), flag
            for choice in action.choices or ():
                assert str(choice) in text, (flag, choice)
    if script == "acestep":
        expected = {"acestep", "acestep generate", "acestep memory", "acestep loras", "acestep train"}
        expected |= {"acestep dataset", *(f"acestep dataset {c}" for c in ("scan", "show", "edit", "save"))}
        assert {n for n, _ in parsers} == expected


def test_fixed_value_flags_take_their_values_from_the_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    from acestep.engine.audio_io import FORMATS
    from acestep.memory.precision import DTYPES
    from acestep.request import TIME_SIGNATURES, VOCAL_LANGUAGES
    from acestep.tasks import TASK_TYPES, TRACK_NAMES

    generate = dict(_walk(_parser_of("acestep", monkeypatch), "acestep"))["acestep generate"]
    choices = {a.option_strings[-1]: a.choices for a in generate._actions if a.option_strings}
    assert tuple(choices["--task"]) == TASK_TYPES
    assert tuple(choices["--track-name"]) == TRACK_NAMES
    assert set(choices["--format"]) == set(FORMATS)  # the formats the writer knows
    assert set(choices["--language"]) == VOCAL_LANGUAGES
    assert tuple(choices["--time-signature"]) == tuple(TIME_SIGNATURES)
    assert set(choices["--dtype"]) == {"auto", *DTYPES}
    for flag in ("--offload-to-cpu", "--offload-dit-to-cpu", "--init-llm"):
        assert tuple(choices[flag]) == BOOL_CHOICES
    # Case does not matter where upstream's users write it capitalised.
    args = cli._main_parser().parse_args(["generate", "--task", "Lego", "--track-name", "VOCALS"])
    assert (args.task_type, args.track_name) == ("lego", "vocals")


def test_ui_bool_flags_take_upstreams_words(capsys) -> None:
    parser = cli._main_parser()
    args = parser.parse_args(["--init_service", "True", "--offload_to_cpu", "no", "--init_llm", "auto"])
    assert _bool_string(args.init_service) is True
    assert _bool_string(args.offload_to_cpu) is False
    assert _bool_string(args.init_llm) is None  # auto: the setting keeps its default
    assert _bool_string(args.service_mode) is None  # not given
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--init_service", "maybe"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'maybe'" in capsys.readouterr().err


# --------------------------------------------------------------------------- acestep generate


def test_progress_bar_shows_stage_and_steps_and_json_stays_clean(
    upstream_turbo: Path, tmp_path: Path, capsys
) -> None:
    args = ["generate", "--checkpoint", str(upstream_turbo), "--device", "cpu", "--duration", "2"]
    args += ["--seed", "4", "--output-dir", str(tmp_path / "out"), "--json"]
    assert cli.main([*args, "--progress"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is the JSON alone
    assert result["metas"]["steps"] == 8
    for stage in ("load", "encode", "diffusion", "decode"):
        assert f"{stage}:" in captured.err, captured.err
    for step in range(1, 9):  # every turbo step is drawn, n/total
        assert f"| {step}/8 [" in captured.err, captured.err
    # By default a bar only on a terminal: capsys is not one.
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)
    assert "diffusion" not in captured.err and "/8 [" not in captured.err


def test_output_file_and_batch_names(upstream_turbo: Path, tmp_path: Path, capsys) -> None:
    """-o FILE: the first take at FILE, the second at FILE-2, in the format of the extension."""
    target = tmp_path / "songs" / "take.flac"
    args = ["generate", "--checkpoint", str(upstream_turbo), "--device", "cpu", "--duration", "2"]
    args += ["--seed", "1,2", "--batch-size", "2", "-o", str(target), "--json"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    second = tmp_path / "songs" / "take-2.flac"
    assert result["audio_paths"] == [str(target), str(second)]
    assert sorted((tmp_path / "songs").iterdir()) == [second, target]  # nothing else left behind
    for path in (target, second):
        info = sf.info(str(path))
        assert (info.format, info.samplerate, info.channels, info.frames) == ("FLAC", 48000, 2, 2 * 48000)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-o", "song.ogg"], "cannot tell the audio format"),
        (["-o", "song.wav", "--format", "flac"], "--format flac writes .flac files, not .wav"),
        (["-o", "song", "--format", "mp3"], "not a name without extension"),
        (["-o", "song.wav", "--output-dir", "elsewhere"], "give one of them"),
    ],
)
def test_output_file_mistakes_exit_2_before_loading(args: list[str], needle: str, tmp_path: Path, capsys):
    # The checkpoint does not exist: exit 2 (not 1) shows the refusal came first.
    assert cli.main(["generate", "--checkpoint", str(tmp_path / "nope"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "song.wav").exists()


def test_wav32_and_upper_case_extensions_are_accepted() -> None:
    from acestep.cli.output_file import batch_paths, resolve_format

    assert resolve_format("a.WAV", None) == "wav"
    assert resolve_format("a.wav", "wav32") == "wav32"
    assert resolve_format("b.mp3", None) == "mp3"
    assert resolve_format(None, None) == "wav"
    assert batch_paths("out/a.wav", 3) == [Path("out/a.wav"), Path("out/a-2.wav"), Path("out/a-3.wav")]


def test_demo_summary_and_a_clean_stderr(tmp_path: Path) -> None:
    """scripts/demo.sh's command: the summary says what was made and where, that it is noise (once),
    and what to run for music; stderr stays empty (no FutureWarning, no model-saving/loading bars,
    no log lines), though the run builds the demo checkpoint."""
    target = tmp_path / "outputs" / "demo" / "demo-lego-vocals.wav"
    args = ["generate", "--demo", "--task", "lego", "--track-name", "vocals", "--seed", "7"]
    args += ["--caption", "soulful indie vocalist", "-o", str(target), "--no-progress"]
    done = subprocess.run(
        [*_command("acestep"), *args],
        cwd=tmp_path,
        env=_script_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    out = done.stdout
    assert "Made 1 file: lego of the vocals track by acestep-v15-base (base model), from the source " in out
    assert "(a synthetic demo tone)" in out
    assert f"  {target}  (8.00 s, 48000 Hz, seed 7)" in out
    assert "Took " in out and " s in all; the generation itself " in out
    assert out.count("DEMO MODE") == 1 and "noise, not music" in out
    assert "  acestep-download -m acestep-v15-base --dir checkpoints\n" in out
    assert (
        "  acestep generate --checkpoint checkpoints --dit acestep-v15-base --task lego --track-name vocals "
        "--src-audio YOUR_SONG.wav --caption 'soulful indie vocalist' --seed 7\n"
    ) in out
    info = sf.info(str(target))
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 8 * 48000)


# --------------------------------------------------------------------------- .env


@pytest.fixture
def dotenv_names() -> Iterator[list[str]]:
    names = [f"ACESTEP_TEST_DOTENV_{n}" for n in ("PLAIN", "QUOTED", "SINGLE", "EXPORTED", "SET", "BARE")]
    saved = {name: os.environ.pop(name, None) for name in names}
    yield names
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


def test_dotenv_comments_quotes_export_and_no_override(tmp_path: Path, dotenv_names: list[str]) -> None:
    plain, quoted, single, exported, already, bare = dotenv_names
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# a comment line\n"
        f"{plain}=value  # note\n"
        f'{quoted}="a # inside quotes"\n'
        f"{single}='two words'\n"
        f"export {exported}=yes\n"
        f"{already}=from-the-file\n"
        f"{bare}\n",
        encoding="utf-8",
    )
    os.environ[already] = "from-the-environment"
    assert load_dotenv(env_file) == [plain, quoted, single, exported]
    assert os.environ[plain] == "value"
    assert os.environ[quoted] == "a # inside quotes"
    assert os.environ[single] == "two words"
    assert os.environ[exported] == "yes"
    assert os.environ[already] == "from-the-environment"
    assert bare not in os.environ
    assert load_dotenv(tmp_path / "missing.env") == []


def test_the_cli_imports_without_the_server_extras() -> None:
    """The core install (no api or ui extra) runs ``acestep generate``: importing the CLI must not
    need uvicorn, FastAPI or Gradio (the wheel smoke test installs only the core)."""
    extras = ("uvicorn", "fastapi", "gradio", "starlette", "h11")
    blocked = f"import sys\nfor name in {extras!r}: sys.modules[name] = None\n"
    done = subprocess.run(
        [sys.executable, "-c", blocked + "import acestep.cli, acestep.cli.generate"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
