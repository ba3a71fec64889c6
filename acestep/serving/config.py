"""Server settings: upstream's ``ACESTEP_*`` names and ``acestep-api`` flags, read once at start."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from acestep import settings
from acestep.engine.audio_limits import DEFAULT_MAX_DECODED_MB, MAX_DECODED_ENV
from acestep.memory.precision import validate_settings
from acestep.serving.params import LM_BACKENDS
from acestep.settings import env_int

LOOPBACK_NAMES = ("localhost",)
LOOPBACK_HOST_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
MIN_KEY_LENGTH = 16  # shorter keys start with a warning


class UnsafeBindError(RuntimeError):
    """Listening beyond loopback with no API key and auth not explicitly switched off."""


def _project_root(env: Mapping[str, str]) -> Path:
    root = env.get("ACESTEP_PROJECT_ROOT")
    return Path(root).expanduser() if root else Path.cwd()


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8001
    api_key: str | None = None
    auth_disabled: bool = False  # ACESTEP_AUTH=off: the operator's explicit "no key, any bind"
    checkpoint: str = ""
    dit: str | None = None
    queue_maxsize: int = 200
    results_dir: Path = field(default_factory=lambda: Path(".cache/acestep/tmp/api_audio"))
    uploads_dir: Path = field(default_factory=lambda: Path(".cache/acestep/tmp/uploads"))
    allowed_paths: list[Path] = field(default_factory=list)  # extra roots for server-side path fields
    max_upload_bytes: int = 100 * 2**20
    result_ttl_s: int = 86400  # finished records and their files are deleted after this (0 = keep)
    cleanup_interval_s: int = 300
    cors_origins: list[str] = field(default_factory=list)
    in_process_worker: bool = False
    preload: bool = False  # load the model at start (upstream's --init_service), without waiting
    enable_mcp: bool = True  # mount the MCP tools at /mcp/ (ACESTEP_MCP=off to leave them out)
    # Without a key: Host names besides loopback and the bind address that may reach the server.
    allowed_hosts: list[str] = field(default_factory=list)
    header_timeout_s: int = 10  # a connection must finish its request headers within this
    body_idle_timeout_s: int = 30  # the longest pause while a request body arrives
    body_timeout_s: int = 300  # the longest time a whole request body may take
    max_connections: int = 200  # open connections and requests; beyond it uvicorn answers 503
    max_uploads: int = 8  # multipart bodies received at once; beyond it a 503 with Retry-After
    auth_failures_per_minute: int = 10  # failed keys or UI logins per client address; then 429

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> ServerConfig:
        env = os.environ if env is None else env
        validate_settings(env)  # the worker's precision settings: a typo stops the start
        env_int(env, MAX_DECODED_ENV, DEFAULT_MAX_DECODED_MB, minimum=1)  # the audio bound, likewise
        _check_lm_backend(env.get("ACESTEP_LM_BACKEND"))
        root = _project_root(env)
        tmp_root = Path(env.get("ACESTEP_TMPDIR") or root / ".cache" / "acestep" / "tmp").expanduser()
        upload_mb = env_int(env, "ACESTEP_MAX_UPLOAD_MB", 100, minimum=1)
        config = cls(
            host=env.get("ACESTEP_API_HOST") or "127.0.0.1",
            port=env_int(env, "ACESTEP_API_PORT", 8001, minimum=0),
            api_key=env.get("ACESTEP_API_KEY") or None,
            auth_disabled=(env.get("ACESTEP_AUTH") or "").strip().lower() == "off",
            checkpoint=str(settings.checkpoints_dir()),
            dit=settings.dit_name(),
            queue_maxsize=env_int(env, "ACESTEP_QUEUE_MAXSIZE", 200, minimum=1),
            # ACESTEP_OUTPUT_DIR: where generated audio is kept (the Docker images' outputs volume).
            results_dir=Path(env.get("ACESTEP_OUTPUT_DIR") or tmp_root / "api_audio").expanduser(),
            uploads_dir=tmp_root / "uploads",
            allowed_paths=[
                Path(p).expanduser() for p in (env.get("ACESTEP_ALLOWED_PATHS") or "").split(os.pathsep) if p
            ],
            max_upload_bytes=upload_mb * 2**20,
            result_ttl_s=env_int(env, "ACESTEP_RESULT_TTL", 86400),
            cleanup_interval_s=env_int(env, "ACESTEP_CLEANUP_INTERVAL", 300, minimum=1),
            cors_origins=[o.strip() for o in (env.get("ACESTEP_CORS_ORIGINS") or "").split(",") if o.strip()],
            in_process_worker=(env.get("ACESTEP_WORKER") or "").lower() == "inprocess",
            enable_mcp=(env.get("ACESTEP_MCP") or "on").strip().lower() not in ("0", "off", "false", "no"),
            allowed_hosts=[
                h.strip().lower() for h in (env.get("ACESTEP_ALLOWED_HOSTS") or "").split(",") if h.strip()
            ],
            header_timeout_s=env_int(env, "ACESTEP_HEADER_TIMEOUT", 10, minimum=1),
            body_idle_timeout_s=env_int(env, "ACESTEP_BODY_IDLE_TIMEOUT", 30, minimum=1),
            body_timeout_s=env_int(env, "ACESTEP_BODY_TIMEOUT", 300, minimum=1),
            max_connections=env_int(env, "ACESTEP_MAX_CONNECTIONS", 200, minimum=1),
            max_uploads=env_int(env, "ACESTEP_MAX_UPLOADS", 8, minimum=1),
            auth_failures_per_minute=env_int(env, "ACESTEP_AUTH_FAILURES", 10, minimum=1),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        return config

    @property
    def input_roots(self) -> list[Path]:
        """Where server-side input paths may point: uploads, results and the operator's extra roots."""
        return [self.uploads_dir, self.results_dir, *self.allowed_paths]

    @property
    def host_names(self) -> list[str]:
        """The Host names a no-key server answers: loopback, the bind address when it is one
        address, and ``ACESTEP_ALLOWED_HOSTS`` (``*`` for any). DNS rebinding needs a name the
        attacker controls, so foreign names are refused."""
        bound = [] if self.host in WILDCARD_HOSTS else [self.host.strip("[]").lower()]
        return list(dict.fromkeys([*LOOPBACK_HOST_NAMES, *bound, *self.allowed_hosts]))

    def check_bind(self) -> None:
        """Upstream served everything without auth on any address when no key was set (defect #4)."""
        if self.api_key or self.auth_disabled or is_loopback(self.host):
            return
        raise UnsafeBindError(
            f"refusing to listen on {self.host} without an API key: set ACESTEP_API_KEY (or --api-key), "
            "or set ACESTEP_AUTH=off to serve without authentication on purpose"
        )


def _check_lm_backend(value: str | None) -> None:
    """Upstream's ``ACESTEP_LM_BACKEND``: the LM always runs on transformers (pt) here; an existing
    ``.env`` asking for vllm or mlx still starts, with a warning that says so."""
    backend = (value or "pt").strip().lower()
    if backend not in LM_BACKENDS:
        raise ValueError(f"ACESTEP_LM_BACKEND must be one of {', '.join(LM_BACKENDS)}, got {value!r}")
    if backend != "pt":
        logger.warning(f"ACESTEP_LM_BACKEND={backend}: the 5 Hz LM runs on transformers (pt) in acestep")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_dotenv(path: Path) -> list[str]:
    """Upstream's ``.env``, read by python-dotenv (``#`` comments, also after a value; quotes;
    ``export``; ``${VAR}`` references), never overriding a variable that is already set. Returns
    the names it set."""
    if not path.is_file():
        return []
    from dotenv import dotenv_values

    added = []
    for key, value in dotenv_values(path, encoding="utf-8").items():
        # A bare ``KEY`` line has no value (None): nothing to set.
        if value is not None and key not in os.environ:
            os.environ[key] = value
            added.append(key)
    return added


def prepare_environment() -> Path:
    """Before the server starts: ``.env`` from the project root, and temporary files (including
    the upload spool) under ``ACESTEP_TMPDIR`` (which wins over TMPDIR/TEMP/TMP, as upstream)."""
    import tempfile

    root = _project_root(os.environ)
    load_dotenv(root / ".env")
    explicit = os.environ.get("ACESTEP_TMPDIR")
    tmp_root = Path(explicit or root / ".cache" / "acestep" / "tmp").expanduser()
    tmp_root.mkdir(parents=True, exist_ok=True)
    for name in ("TMPDIR", "TEMP", "TMP"):
        if explicit or name not in os.environ:
            os.environ[name] = str(tmp_root)
    # Gradio's cache in our folder, not a /tmp/gradio other apps share: the retention sweep owns it.
    # As for TMPDIR, an explicit ACESTEP_TMPDIR wins over an inherited GRADIO_TEMP_DIR.
    if explicit or "GRADIO_TEMP_DIR" not in os.environ:
        os.environ["GRADIO_TEMP_DIR"] = str(tmp_root / "gradio")
    tempfile.tempdir = None  # forget a cached default so the new one is used
    return tmp_root
