"""The settings registry: one declaration per name, a generated page, a frozen snapshot."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from acestep import settings

ROOT = Path(__file__).resolve().parent.parent
# Reads of the environment outside the registry (writes for this process or a child are allowed).
READ = re.compile(r"os\.getenv|os\.environ(?!\[[^\]]+\]\s*=[^=]|\.update\(|\.items\(\))")


def test_the_configuration_page_is_up_to_date() -> None:
    made = subprocess.run(
        [sys.executable, "-m", "acestep.settings", "--markdown"], capture_output=True, text=True, check=True
    ).stdout
    assert (ROOT / "docs" / "configuration.md").read_text() == made, (
        "regenerate: python -m acestep.settings --markdown > docs/configuration.md"
    )


def test_the_code_names_no_undeclared_setting() -> None:
    named = set()
    for source in (ROOT / "acestep").rglob("*.py"):
        named |= set(re.findall(r"\bACESTEP_[A-Z0-9_]*[A-Z0-9]\b", source.read_text()))
    assert not sorted(named - set(settings.DECLARED)), "declare these in acestep/setting_table.py"


def test_only_the_registry_reads_the_environment() -> None:
    readers = [
        f"{source.relative_to(ROOT)}:{number}: {line.strip()}"
        for source in (ROOT / "acestep").rglob("*.py")
        if source.relative_to(ROOT).as_posix() != "acestep/settings.py"
        for number, line in enumerate(source.read_text().splitlines(), 1)
        if READ.search(line) and not line.lstrip().startswith(("#", '"', "environment"))
    ]
    assert not readers, "read through acestep.settings instead:\n" + "\n".join(readers)


def test_a_snapshot_is_frozen_and_holds_only_declared_names() -> None:
    snapshot = settings.read({"ACESTEP_API_PORT": "9000", "PATH": "/bin", "ACESTEP_API_KEY": "k" * 20})
    assert dict(snapshot) == {"ACESTEP_API_PORT": "9000", "ACESTEP_API_KEY": "k" * 20}
    assert snapshot.value("ACESTEP_API_PORT") == 9000
    assert "k" * 20 not in repr(snapshot)
    with pytest.raises(AttributeError):
        snapshot.x = 1  # type: ignore[attr-defined]
    with pytest.raises(settings.UndeclaredSetting):
        snapshot.get("ACESTEP_NOT_A_SETTING")


def test_a_bad_value_names_the_setting_and_what_is_allowed() -> None:
    snapshot = settings.read({"ACESTEP_MAX_UPLOADS": "0", "ACESTEP_MCP": "maybe"})
    with pytest.raises(ValueError, match="ACESTEP_MAX_UPLOADS must be at least 1, got 0"):
        snapshot.value("ACESTEP_MAX_UPLOADS")
    with pytest.raises(ValueError, match="ACESTEP_MCP must be true/false/auto"):
        snapshot.value("ACESTEP_MCP")


def test_the_process_reads_once_until_told_to_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACESTEP_API_PORT", "9001")
    before = settings.current()
    monkeypatch.setitem(__import__("os").environ, "ACESTEP_API_PORT", "9002")  # behind the registry's back
    assert settings.current() is before and before["ACESTEP_API_PORT"] == "9001"
    assert settings.reload()["ACESTEP_API_PORT"] == "9002"


def test_the_worker_environment_drops_the_secret_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACESTEP_API_KEY", "s" * 20)
    monkeypatch.setenv("ACESTEP_QUEUE_URL", "redis://:pw@host/0")
    child = settings.child_environment({"ACESTEP_DEVICE": "cpu"})
    assert child["ACESTEP_DEVICE"] == "cpu" and "PATH" in child
    assert not set(settings.SECRET_SETTINGS) & set(child)
    assert set(settings.SECRET_SETTINGS) == {"ACESTEP_API_KEY", "ACESTEP_QUEUE_URL"}


# A read site that states a default of its own: a second copy of the registry's, free to drift.
NAME = r"""(?:"[A-Z][A-Z0-9_]+"|[A-Z][A-Z0-9_]*_ENV)"""
OWN_DEFAULT = re.compile(
    r"\benv_int\("  # the registry's int rule with a default and minimum written at the call
    rf"|\.get\(\s*{NAME}\s*,"  # env.get("ACESTEP_X", "5")
    rf"|\.get\(\s*{NAME}\s*\)\s*or\s*(?:\"[^\"]+\"|'[^']+'|\d|[A-Z][A-Z0-9_]+\b)"  # env.get(...) or "5"
)


def own_defaults(text: str) -> list[str]:
    return [text[m.start() : text.find("\n", m.start())].strip() for m in OWN_DEFAULT.finditer(text)]


def test_the_scan_finds_a_default_written_at_a_read_site() -> None:
    assert own_defaults('host = env.get("ACESTEP_API_HOST") or "127.0.0.1"\n')
    assert own_defaults('x = float(env.get("ACESTEP_AVG_JOB_SECONDS", "5.0"))\n')
    assert own_defaults("n = env_int(env, UPLOAD_TTL_ENV, DEFAULT_UPLOAD_TTL_S)\n")
    assert own_defaults("n = env.get(MAX_DECODED_ENV) or DEFAULT_MAX_DECODED_MB\n")
    assert not own_defaults('url = (env.get("ACESTEP_QUEUE_URL") or "").strip()\n')
    assert not own_defaults('host = settings.value(env, "ACESTEP_API_HOST")\n')


def test_no_read_site_writes_a_default_of_its_own() -> None:
    """Each default and minimum is written once, in acestep/setting_table.py; a read site takes
    them with ``settings.value(env, name)``."""
    found = [
        f"{source.relative_to(ROOT)}: {line}"
        for source in (ROOT / "acestep").rglob("*.py")
        if source.relative_to(ROOT).as_posix() != "acestep/setting_table.py"
        for line in own_defaults(source.read_text())
    ]
    assert not found, "take the default from the registry (settings.value):\n" + "\n".join(found)


def test_the_config_defaults_are_the_registry_defaults() -> None:
    from acestep.cluster.settings import ClusterSettings
    from acestep.jobs.gpu_tokens import GpuTokenSettings
    from acestep.memory.keep_alive import KeepAlivePolicy
    from acestep.serving.config import ServerConfig

    built, bare = ServerConfig.from_env({}), ServerConfig()
    assert (built.host, built.port, built.max_upload_bytes) == (bare.host, bare.port, bare.max_upload_bytes)
    assert (built.header_timeout_s, built.auth_failures_per_minute) == (10, 10)
    # The folders come from the working directory; every other field is the registry's default.
    assert built == dataclasses.replace(
        bare, checkpoint=built.checkpoint, results_dir=built.results_dir, uploads_dir=built.uploads_dir
    )
    assert ClusterSettings.from_env({"ACESTEP_QUEUE_URL": "redis://h"}) == ClusterSettings(url="redis://h")
    assert GpuTokenSettings.from_env({"ACESTEP_GPU_QUEUE_URL": "http://q"}) == GpuTokenSettings(
        url="http://q"
    )
    policy = KeepAlivePolicy.from_env({})
    assert policy == KeepAlivePolicy(default=300.0) and policy.idle_level == "free"


def test_unset_is_the_default_and_blank_is_unset() -> None:
    assert settings.value({}, "ACESTEP_API_HOST") == "127.0.0.1"
    assert settings.value({"ACESTEP_API_PORT": "  "}, "ACESTEP_API_PORT") == 8001
    assert settings.value({}, "ACESTEP_MAX_BATCH_SIZE") is None  # no default: the GPU tier decides
    assert settings.value({}, "ACESTEP_MCP") is True
    assert settings.value({"ACESTEP_MCP": "off"}, "ACESTEP_MCP") is False
    assert settings.value({}, "ACESTEP_OFFLOAD_TO_CPU") is None  # auto
    with pytest.raises(ValueError, match="ACESTEP_WORKER_HEARTBEAT_TIMEOUT must be at least 2, got 1"):
        settings.value({"ACESTEP_WORKER_HEARTBEAT_TIMEOUT": "1"}, "ACESTEP_WORKER_HEARTBEAT_TIMEOUT")
    with pytest.raises(settings.UndeclaredSetting):
        settings.value({}, "ACESTEP_NOT_A_SETTING")


def test_the_server_builds_its_parts_from_the_snapshot_its_config_carries(
    upstream_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acestep.cluster.settings import ClusterConfigError
    from acestep.serving.app import create_app
    from acestep.serving.config import ServerConfig

    monkeypatch.delenv("ACESTEP_QUEUE_URL", raising=False)  # the process itself has no cluster
    snapshot = settings.read({"ACESTEP_QUEUE_URL": "amqp://rabbit", "ACESTEP_TMPDIR": str(tmp_path)})
    config = ServerConfig.from_env(snapshot, checkpoint=str(upstream_base))
    assert config.env is snapshot and config.uploads_dir == tmp_path / "uploads"
    with pytest.raises(ClusterConfigError, match="amqp://rabbit"):
        create_app(config)
