"""Server settings: upstream's ``ACESTEP_*`` names (declared in :mod:`acestep.settings`) and
``acestep-api`` flags, read once at start."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from acestep import settings
from acestep.engine.audio_limits import MAX_DECODED_ENV
from acestep.memory.precision import validate_settings
from acestep.memory.quantization import validate_settings as validate_quantization
from acestep.serving.params import LM_BACKENDS

LOOPBACK_NAMES = ("localhost",)
LOOPBACK_HOST_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
MIN_KEY_LENGTH = 16  # shorter keys start with a warning
# The machine's temp folder as the environment named it when the server started, before
# prepare_environment points TMPDIR at ACESTEP_TMPDIR: where clients on this machine write the files
# they name (flow 6 of docs/api.md; patches/0045). Other users write there too, so a path in it is
# copied when it is admitted (jobs/uploads.open_shared), never read later.
SYSTEM_TEMP = Path(tempfile.gettempdir())


class UnsafeBindError(RuntimeError):
    """Listening beyond loopback with no API key and auth not explicitly switched off."""


@dataclass
class ServerConfig:
    host: str = settings.value({}, "ACESTEP_API_HOST")  # each default is the registry's
    port: int = settings.value({}, "ACESTEP_API_PORT")
    api_key: str | None = None
    auth_disabled: bool = False  # ACESTEP_AUTH=off: the operator's explicit "no key, any bind"
    checkpoint: str = ""
    dit: str | None = None
    queue_maxsize: int = settings.value({}, "ACESTEP_QUEUE_MAXSIZE")
    results_dir: Path = field(default_factory=lambda: Path(".cache/acestep/tmp/api_audio"))
    uploads_dir: Path = field(default_factory=lambda: Path(".cache/acestep/tmp/uploads"))
    allowed_paths: list[Path] = field(default_factory=list)  # extra roots for server-side path fields
    max_upload_bytes: int = settings.value({}, "ACESTEP_MAX_UPLOAD_MB") * 2**20
    # Finished records and their files are deleted after this (0 = keep).
    result_ttl_s: int = settings.value({}, "ACESTEP_RESULT_TTL")
    cleanup_interval_s: int = settings.value({}, "ACESTEP_CLEANUP_INTERVAL")
    cors_origins: list[str] = field(default_factory=list)
    in_process_worker: bool = False
    preload: bool = False  # load the model at start (upstream's --init_service), without waiting
    enable_mcp: bool = True  # mount the MCP tools at /mcp/ (ACESTEP_MCP=off to leave them out)
    enable_training: bool = False  # the training routes and tab (ACESTEP_TRAINING=on), off as upstream's
    # Without a key: Host names besides loopback and the bind address that may reach the server.
    allowed_hosts: list[str] = field(default_factory=list)
    # A connection must finish its request headers within this.
    header_timeout_s: int = settings.value({}, "ACESTEP_HEADER_TIMEOUT")
    # The longest pause while a request body arrives, and the longest time a whole body may take.
    body_idle_timeout_s: int = settings.value({}, "ACESTEP_BODY_IDLE_TIMEOUT")
    body_timeout_s: int = settings.value({}, "ACESTEP_BODY_TIMEOUT")
    # Open connections and requests; beyond it uvicorn answers 503.
    max_connections: int = settings.value({}, "ACESTEP_MAX_CONNECTIONS")
    # Multipart bodies received at once; beyond it a 503 with Retry-After.
    max_uploads: int = settings.value({}, "ACESTEP_MAX_UPLOADS")
    # Failed keys or UI logins per client address; then 429.
    auth_failures_per_minute: int = settings.value({}, "ACESTEP_AUTH_FAILURES")
    # The settings this config was read from: the parts built at start (the memory manager, the
    # cluster settings) read theirs from it, not from the environment again.
    env: Mapping[str, str] = field(default_factory=settings.current, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> ServerConfig:
        env = settings.current() if env is None else env

        def value(name: str) -> Any:  # the registry's default, minimum and parse (one place each)
            return settings.value(env, name)

        validate_settings(env)  # the worker's precision settings: a typo stops the start
        validate_quantization(env)  # ACESTEP_QUANTIZE likewise (the card is checked by the manager)
        value(MAX_DECODED_ENV)  # the audio bound, likewise
        _check_lm_backend(env)
        root = settings.project_root(env)
        tmp_root = Path(env.get("ACESTEP_TMPDIR") or root / ".cache" / "acestep" / "tmp").expanduser()
        config = cls(
            env=env,
            host=value("ACESTEP_API_HOST"),
            port=value("ACESTEP_API_PORT"),
            api_key=value("ACESTEP_API_KEY"),
            auth_disabled=(value("ACESTEP_AUTH") or "").lower() == "off",
            checkpoint=str(settings.checkpoints_dir(env)),
            dit=settings.dit_name(env),
            queue_maxsize=value("ACESTEP_QUEUE_MAXSIZE"),
            # ACESTEP_OUTPUT_DIR: where generated audio is kept (the Docker images' outputs volume).
            results_dir=Path(env.get("ACESTEP_OUTPUT_DIR") or tmp_root / "api_audio").expanduser(),
            uploads_dir=tmp_root / "uploads",
            allowed_paths=[
                Path(p).expanduser() for p in (env.get("ACESTEP_ALLOWED_PATHS") or "").split(os.pathsep) if p
            ],
            max_upload_bytes=value("ACESTEP_MAX_UPLOAD_MB") * 2**20,
            result_ttl_s=value("ACESTEP_RESULT_TTL"),
            cleanup_interval_s=value("ACESTEP_CLEANUP_INTERVAL"),
            cors_origins=[o.strip() for o in (env.get("ACESTEP_CORS_ORIGINS") or "").split(",") if o.strip()],
            in_process_worker=value("ACESTEP_WORKER").lower() == "inprocess",
            enable_mcp=value("ACESTEP_MCP"),
            enable_training=value("ACESTEP_TRAINING"),
            allowed_hosts=[
                h.strip().lower() for h in (env.get("ACESTEP_ALLOWED_HOSTS") or "").split(",") if h.strip()
            ],
            header_timeout_s=value("ACESTEP_HEADER_TIMEOUT"),
            body_idle_timeout_s=value("ACESTEP_BODY_IDLE_TIMEOUT"),
            body_timeout_s=value("ACESTEP_BODY_TIMEOUT"),
            max_connections=value("ACESTEP_MAX_CONNECTIONS"),
            max_uploads=value("ACESTEP_MAX_UPLOADS"),
            auth_failures_per_minute=value("ACESTEP_AUTH_FAILURES"),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        return config

    @property
    def owned_roots(self) -> list[Path]:
        """Folders only the server and its operator write: uploads, results, the operator's extra
        roots, and the server's own temp folder (ACESTEP_TMPDIR, the uploads folder's parent)."""
        return [self.uploads_dir, self.results_dir, *self.allowed_paths, self.uploads_dir.parent]

    @property
    def shared_roots(self) -> list[Path]:
        """The temp folders, where clients on this machine write the files they name (as upstream
        accepts them): the machine's, and the process's own if TMPDIR names another. Never the
        filesystem root or the working directory, which a temp-folder fallback can yield."""
        roots: list[Path] = []
        for folder in (SYSTEM_TEMP, Path(tempfile.gettempdir())):
            try:
                temp = folder.resolve()
            except (OSError, RuntimeError):
                continue
            if temp not in (Path(temp.anchor), Path.cwd().resolve(), *roots):
                roots.append(temp)
        return roots

    @property
    def input_roots(self) -> list[Path]:
        """Where server-side input paths may point (confine() resolves links first, so none leads
        out: patches/0045)."""
        return [*self.owned_roots, *self.shared_roots]

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


def _check_lm_backend(env: Mapping[str, str]) -> None:
    """Upstream's ``ACESTEP_LM_BACKEND``: the LM always runs on transformers (pt) here; an existing
    ``.env`` asking for vllm or mlx still starts, with a warning that says so."""
    backend, raw = settings.value(env, "ACESTEP_LM_BACKEND").lower(), env.get("ACESTEP_LM_BACKEND")
    if backend not in LM_BACKENDS:
        raise ValueError(f"ACESTEP_LM_BACKEND must be one of {', '.join(LM_BACKENDS)}, got {raw!r}")
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

    # A bare ``KEY`` line has no value (None): nothing to set.
    values = {k: v for k, v in dotenv_values(path, encoding="utf-8").items() if v is not None}
    return settings.set_unset(values)


def prepare_environment() -> Path:
    """Before the server starts: ``.env`` from the project root, and temporary files (including
    the upload spool) under ``ACESTEP_TMPDIR`` (which wins over TMPDIR/TEMP/TMP, as upstream)."""
    import tempfile

    load_dotenv(settings.project_root(settings.reload()) / ".env")
    env = settings.current()
    root = settings.project_root(env)
    explicit = env.get("ACESTEP_TMPDIR")
    tmp_root = Path(explicit or root / ".cache" / "acestep" / "tmp").expanduser()
    tmp_root.mkdir(parents=True, exist_ok=True)
    for name in ("TMPDIR", "TEMP", "TMP"):
        if explicit or name not in env:
            os.environ[name] = str(tmp_root)
    # Gradio's cache in our folder, not a /tmp/gradio other apps share: the retention sweep owns it.
    # As for TMPDIR, an explicit ACESTEP_TMPDIR wins over an inherited GRADIO_TEMP_DIR.
    if explicit or "GRADIO_TEMP_DIR" not in env:
        os.environ["GRADIO_TEMP_DIR"] = str(tmp_root / "gradio")
    settings.reload()  # the rest of the process sees the folders set here
    tempfile.tempdir = None  # forget a cached default so the new one is used
    return tmp_root
