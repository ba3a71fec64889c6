"""``acestep train`` as a user runs it (``python -m acestep.cli train``, a process of its own) on
the tiny base checkpoint and a folder of three short songs: a run writes its adapter where
``acestep loras`` finds it, ``--resume`` continues it, Ctrl-C stops it with the adapter kept,
and bad input is refused with exit code 2 and the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from acestep.testing import synthetic_audio

# Three songs of 3 s, batch 1, one micro-batch per update: three updates per epoch.
TINY = ("--rank", "4", "--accumulation", "1", "--crop-seconds", "2", "--warmup", "0")
UPDATES_PER_EPOCH = 3


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_train")
    songs = root / "songs"
    songs.mkdir()
    for i in range(3):
        sf.write(songs / f"song{i}.wav", synthetic_audio(3.0, seed=i), 48000)
        (songs / f"song{i}.txt").write_text(f"[verse]\nline {i}\nla la la\n")
    return {"songs": songs, "training": root / "training", "loras": root / "loras"}


def _env(places: dict[str, Path]) -> dict[str, str]:
    return os.environ | {
        "ACESTEP_TRAINING_DIR": str(places["training"]),
        "ACESTEP_LORA_DIR": str(places["loras"]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def acestep(places: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "acestep.cli", *args],
        env=_env(places),
        capture_output=True,
        text=True,
        timeout=600,
    )


def train(places, checkpoint: Path, *args: str) -> subprocess.CompletedProcess:
    return acestep(places, "train", "--checkpoint", str(checkpoint), *TINY, *args)


def test_a_run_writes_its_adapter_and_resume_continues_it(places, upstream_base):
    songs = str(places["songs"])
    first = train(places, upstream_base, "--dataset", songs, "--epochs", "1")
    assert first.returncode == 0, first.stderr
    assert "training done: 3/3 updates" in first.stdout
    assert "songs-lora  (diffusers)" in first.stdout and "songs-lora-peft  (peft)" in first.stdout
    assert "acestep generate" in first.stdout and "--lora songs-lora" in first.stdout
    assert "epoch 1/1" in first.stderr  # stderr is not a terminal: a line per epoch, no bar

    listed = acestep(places, "loras", "--json")
    entries = {e["name"]: e for e in json.loads(listed.stdout)["loras"]}
    assert {"songs-lora", "songs-lora-peft"} <= entries.keys()
    assert entries["songs-lora"]["base_variant"] == "base" and entries["songs-lora"]["rank"] == 4

    again = train(places, upstream_base, "--dataset", songs, "--epochs", "1")
    assert again.returncode == 2
    assert "already has checkpoints" in again.stderr and "--resume" in again.stderr
    assert "Traceback" not in again.stderr

    other = train(places, upstream_base, "--dataset", songs, "--epochs", "2", "--resume", "--rank", "8")
    assert other.returncode == 2 and "--rank" in other.stderr and "other settings" in other.stderr

    resumed = train(places, upstream_base, "--dataset", songs, "--epochs", "2", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    progress = json.loads(resumed.stdout)
    assert progress["step"] == 2 * UPDATES_PER_EPOCH and not progress["stopped"]
    assert progress["checkpoints"] == [UPDATES_PER_EPOCH, 2 * UPDATES_PER_EPOCH]
    assert progress["preprocess"]["computed"] == {"vae": 0, "text": 0, "condition": 0}  # cached
    assert [step for step, _ in progress["losses"]][:2] == [1, 2]  # the first run's history kept
    assert progress["adapter"] == "songs-lora"


def test_a_lokr_run_sets_the_lokr_fields_and_keeps_stdout_json(places, upstream_base):
    done = train(places, upstream_base, "--dataset", str(places["songs"]), "--adapter", "lokr",
                 "--epochs", "1", "--output-name", "kron", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    progress = json.loads(done.stdout)  # LyCORIS' own log lines stay off stdout
    assert progress["adapter"] == "kron" and list(progress["adapter_paths"]) == ["lokr"]
    listed = json.loads(acestep(places, "loras", "--json").stdout)["loras"]
    kron = next(e for e in listed if e["name"] == "kron")
    assert kron["format"] == "lokr" and kron["rank"] == 4  # --rank set lokr_linear_dim


def test_ctrl_c_stops_after_the_update_and_keeps_the_adapter(places, upstream_base):
    command = [sys.executable, "-m", "acestep.cli", "train", "--checkpoint", str(upstream_base), *TINY,
               "--dataset", str(places["songs"]), "--epochs", "500", "--output-name", "stopped"]  # fmt: skip
    process = subprocess.Popen(
        command, env=_env(places), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        seen = []
        for line in process.stderr:  # a line per epoch: interrupt once the second epoch began
            seen.append(line)
            if line.startswith("epoch 2/"):
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(seen) + err
    assert "stopping after the update in progress" in err
    assert "training stopped" in out and "/1500 updates" in out
    assert (places["loras"] / "stopped" / "pytorch_lora_weights.safetensors").is_file()
    assert (places["training"] / "runs" / "stopped" / "checkpoints").is_dir()


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda d: None, ["has no audio files"]),
        (
            lambda d: ((d / "broken.wav").write_bytes(b"not audio"), (d / "empty.mp3").write_bytes(b"")),
            ["has no usable samples", "broken.wav", "empty.mp3: the file is empty"],
        ),
    ],
    ids=["empty-folder", "unusable-files"],
)
def test_a_dataset_without_usable_audio_is_refused_with_the_reason(
    places, upstream_base, tmp_path, make, needles
):
    make(tmp_path)
    done = train(places, upstream_base, "--dataset", str(tmp_path))
    assert done.returncode == 2
    assert all(needle in done.stderr for needle in needles), done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_dataset_and_bad_values_are_refused_with_the_flag(places, upstream_base):
    missing = train(places, upstream_base, "--dataset", "no-such-dataset")
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert str(places["training"]) in missing.stderr  # a relative name is looked up there
    bad = train(places, upstream_base, "--dataset", str(places["songs"]), "--rank", "0")
    assert bad.returncode == 2 and "--rank: Input should be greater than or equal to 1" in bad.stderr
    name = train(places, upstream_base, "--dataset", str(places["songs"]), "--output-name", "../x")
    assert name.returncode == 2 and "--output-name must be a plain name" in name.stderr
