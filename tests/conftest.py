"""Shared fixtures: tiny checkpoints in both layouts, built once per session, and a source WAV.

Every checkpoint comes from :func:`acestep.testing.make_tiny_checkpoint` (random weights at a tiny
size, same seed -> same bytes), so nothing is ever fetched from a hub.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never reach a hub: a stray from_pretrained on a repo id must fail fast, not download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _share_the_cores() -> None:
    """pytest-xdist runs its workers on the same cores, and torch gives each process (each worker,
    and each server or GPU-worker process a test starts, which inherit this environment) one
    thread per core: OpenMP threads then spin against each other. Two concurrent runs of
    tests/test_lm_engine.py on 2 cores took 171 s each that way, 44 s with one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not os.environ.get("OMP_NUM_THREADS"):  # one the caller set stands
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // workers))
    if "torch" in sys.modules:  # already imported (a plugin): the variable came too late for it
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores()
# Tests that use the quantized cache name their own folder; the rest must not fill ~/.cache.
os.environ.setdefault("ACESTEP_QUANTIZE_CACHE", "off")

SOURCE_SECONDS = 6.0
SOURCE_SEED = 1
SAMPLE_RATE = 48000


def _build(tmp_path_factory: pytest.TempPathFactory, layout: str, variant: str) -> Path:
    from acestep.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(
        tmp_path_factory.mktemp(f"{layout}_{variant}"), layout=layout, variant=variant, seed=0
    )


@pytest.fixture(scope="session")
def upstream_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An upstream ``checkpoints/`` root holding ``acestep-v15-base`` (seed 0)."""
    return _build(tmp_path_factory, "upstream", "base")


@pytest.fixture(scope="session")
def upstream_turbo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An upstream ``checkpoints/`` root holding ``acestep-v15-turbo`` (seed 0)."""
    return _build(tmp_path_factory, "upstream", "turbo")


@pytest.fixture(scope="session")
def diffusers_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved diffusers ``AceStepPipeline`` folder, base variant (seed 0)."""
    return _build(tmp_path_factory, "diffusers", "base")


@pytest.fixture(scope="session")
def diffusers_turbo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved diffusers ``AceStepPipeline`` folder, turbo variant (seed 0)."""
    return _build(tmp_path_factory, "diffusers", "turbo")


@pytest.fixture(scope="session")
def source_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6.0 s, 48 kHz stereo float WAV of :func:`acestep.testing.synthetic_audio` (seed 1)."""
    import soundfile as sf

    from acestep.testing import synthetic_audio

    path = tmp_path_factory.mktemp("audio") / "source.wav"
    sf.write(str(path), synthetic_audio(SOURCE_SECONDS, seed=SOURCE_SEED), SAMPLE_RATE)
    return path


def _engine(path: Path):
    from acestep import AceStep

    return AceStep.from_pretrained(path, device="cpu")


@pytest.fixture(scope="session")
def engine_upstream_base(upstream_base: Path):
    return _engine(upstream_base)


@pytest.fixture(scope="session")
def engine_upstream_turbo(upstream_turbo: Path):
    return _engine(upstream_turbo)


@pytest.fixture(scope="session")
def engine_diffusers_base(diffusers_base: Path):
    return _engine(diffusers_base)


@pytest.fixture(scope="session")
def engine_diffusers_turbo(diffusers_turbo: Path):
    return _engine(diffusers_turbo)


@pytest.fixture(scope="session")
def lm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An upstream root with ``acestep-v15-base`` and a tiny ``acestep-5Hz-lm-1.7B`` (seed 0)."""
    from acestep.testing import make_tiny_lm

    root = _build(tmp_path_factory, "upstream", "base")
    make_tiny_lm(root, size="1.7B", seed=0)
    return root


@pytest.fixture(scope="session")
def lm_limits():
    """CPU limits with the LM switched on (the cpu tier leaves it off by default)."""
    from acestep.memory.limits import Limits

    return Limits.for_gpu(None, {"ACESTEP_INIT_LLM": "true"})


@pytest.fixture(scope="session")
def engine_with_lm(lm_checkpoint: Path, lm_limits):
    from acestep import AceStep

    return AceStep.from_pretrained(lm_checkpoint, device="cpu", limits=lm_limits)


@pytest.fixture(autouse=True)
def _settings_follow_monkeypatch(monkeypatch: pytest.MonkeyPatch):
    """The process reads its settings once (acestep/settings.py); a test that changes the
    environment with ``monkeypatch`` stands for a process started with that environment."""
    from acestep import settings

    settings.reload()
    for method in ("setenv", "delenv"):
        original = getattr(monkeypatch, method)

        def changed(*args, _original=original, **kwargs):
            _original(*args, **kwargs)
            settings.reload()

        monkeypatch.__dict__[method] = changed
    yield
