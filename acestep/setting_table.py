"""Every setting the code reads, declared once: name, type, default, one line of doc.

The model is vLLM's ``envs.py``: one table of names (upstream's ``ACESTEP_*`` and a few foreign
ones), each with the rule that parses its text. Reading the environment is :mod:`acestep.settings`'
job; this module only declares. ``docs/configuration.md`` is generated from this table:
``python -m acestep.settings --markdown > docs/configuration.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TRUE_WORDS = frozenset({"1", "true", "yes", "y", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "off"})


def parse_bool_setting(name: str, value: str | None) -> bool | None:
    """Upstream's truthy words; empty or ``auto`` = None (keep the default)."""
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be true/false/auto, got {value!r}")


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    """An integer setting: unset or blank = ``default``; anything else must parse and be >= minimum."""
    value = (env.get(name) or "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


@dataclass(frozen=True)
class Setting:
    """One name the code reads. ``parse`` turns the raw text (None when unset or blank) into the
    value; the domain module that owns a setting may parse it with its own richer rules."""

    name: str
    kind: str  # shown in the docs: int, float, bool, text, path, choice, list, url, duration
    default: str  # as the docs show it ("" = unset)
    doc: str
    group: str
    secret: bool = False  # never passed to the GPU worker, never written to a log
    foreign: bool = False  # a name another program defines; we read it, we do not own it
    minimum: int | None = None  # for ints: the smallest allowed value

    def parse(self, raw: str | None) -> Any:
        """The value of ``raw`` (unset or blank = the default; None where the default is unset,
        or ``auto`` for a bool: the caller decides). A bad value raises naming the setting."""
        text = (raw or "").strip()
        if self.kind == "int":
            default = int(self.default) if self.default else None
            return env_int({self.name: text}, self.name, default, self.minimum or 0)  # type: ignore[arg-type]
        if self.kind == "float":
            if not text:
                return float(self.default) if self.default else None
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{self.name} must be a number, got {raw!r}") from None
        if self.kind == "bool":
            value = parse_bool_setting(self.name, raw)
            return parse_bool_setting(self.name, self.default) if value is None else value
        return text or (self.default or None)


GROUPS = {
    "server": "Server",
    "security": "Security and limits",
    "paths": "Folders and models",
    "memory": "Memory and devices",
    "precision": "Precision and speed",
    "lm": "The 5 Hz LM",
    "lora": "LoRA",
    "worker": "GPU worker",
    "cluster": "Cluster and GPU tokens",
    "foreign": "Names defined by other programs",
}


def _group(group: str, *rows: tuple) -> tuple[Setting, ...]:
    """Rows of (name, kind, default, doc[, options]) in one docs section."""
    return tuple(Setting(*row[:4], group=group, **(row[4] if len(row) > 4 else {})) for row in rows)


REGISTRY: tuple[Setting, ...] = (
    *_group(
        "server",
        ("ACESTEP_API_HOST", "text", "127.0.0.1", "Address the REST server listens on."),
        ("ACESTEP_API_PORT", "int", "8001", "Port the REST server listens on."),
        ("ACESTEP_QUEUE_MAXSIZE", "int", "200", "Jobs that may wait in the local queue.", {"minimum": 1}),
        ("ACESTEP_WORKER", "choice", "process", "`inprocess` runs the engine inside the server process."),
        ("ACESTEP_MCP", "bool", "on", "`off` leaves the MCP tools out of `/mcp/`."),
        (
            "ACESTEP_TRAINING",
            "bool",
            "off",
            "`on` serves the training routes (`/v1/training/*`, `/v1/dataset/*`) and the Training tab.",
        ),
        ("ACESTEP_MCP_EMBED_MB", "int", "16", "Largest audio (MiB) an MCP answer embeds; past it, links."),
        ("ACESTEP_CORS_ORIGINS", "list", "", "Comma-separated origins CORS allows besides localhost pages."),
        ("ACESTEP_RESULT_TTL", "int", "86400", "Seconds finished jobs and their files are kept (0 = keep)."),
        ("ACESTEP_UPLOAD_TTL", "int", "86400", "Seconds uploads and Gradio's cache are kept (0 = keep)."),
        ("ACESTEP_CLEANUP_INTERVAL", "int", "300", "Seconds between retention sweeps.", {"minimum": 1}),
        ("ACESTEP_AVG_JOB_SECONDS", "float", "5.0", "Assumed job length before any job has finished."),
        (
            "ACESTEP_GENERATION_TIMEOUT",
            "float",
            "600",
            "Seconds `/lego`, `/v1/chat/completions` and MCP task tools wait for their job, then cancel it.",
        ),
        (
            "ACESTEP_CONTROL_TIMEOUT",
            "int",
            "600",
            "Seconds a control command waits for the running job.",
            {"minimum": 1},
        ),
        (
            "ACESTEP_DOWNLOAD_SOURCE",
            "text",
            "",
            "Accepted for upstream compatibility; downloads use Hugging Face.",
        ),
        ("ACESTEP_NOOP_SECONDS", "float", "0", "Test only: the model-free worker's job length."),
    ),
    *_group(
        "security",
        ("ACESTEP_API_KEY", "text", "", "Bearer key the API and UI require.", {"secret": True}),
        ("ACESTEP_AUTH", "choice", "", "`off` serves without a key on any address, on purpose."),
        (
            "ACESTEP_ALLOWED_HOSTS",
            "list",
            "",
            "Host names a keyless server answers besides loopback (`*` any).",
        ),
        (
            "ACESTEP_ALLOWED_PATHS",
            "list",
            "",
            "Extra roots (os.pathsep-separated) server-side paths may name.",
        ),
        ("ACESTEP_MAX_UPLOAD_MB", "int", "100", "Largest upload in MiB.", {"minimum": 1}),
        ("ACESTEP_MAX_UPLOADS", "int", "8", "Multipart bodies received at once.", {"minimum": 1}),
        ("ACESTEP_MAX_DECODED_MB", "int", "512", "Largest decoded input audio in MiB.", {"minimum": 1}),
        (
            "ACESTEP_HEADER_TIMEOUT",
            "int",
            "10",
            "Seconds a client has to send its request headers.",
            {"minimum": 1},
        ),
        (
            "ACESTEP_BODY_IDLE_TIMEOUT",
            "int",
            "30",
            "Longest pause in seconds while a body arrives.",
            {"minimum": 1},
        ),
        (
            "ACESTEP_BODY_TIMEOUT",
            "int",
            "300",
            "Longest time in seconds a whole body may take.",
            {"minimum": 1},
        ),
        (
            "ACESTEP_MAX_CONNECTIONS",
            "int",
            "200",
            "Open connections before uvicorn answers 503.",
            {"minimum": 1},
        ),
        (
            "ACESTEP_AUTH_FAILURES",
            "int",
            "10",
            "Failed keys per client address and minute before 429.",
            {"minimum": 1},
        ),
    ),
    *_group(
        "paths",
        (
            "ACESTEP_PROJECT_ROOT",
            "path",
            "",
            "Root for `.env`, checkpoints, loras and temporary files (default: cwd).",
        ),
        ("ACESTEP_CHECKPOINTS_DIR", "path", "", "Checkpoints folder (default `<root>/checkpoints`)."),
        ("ACESTEP_CONFIG_PATH", "text", "", "DiT folder name, e.g. `acestep-v15-base`."),
        ("ACESTEP_CONFIG_PATH2", "text", "", "Model slot 2: a second DiT folder name (blank: no slot 2)."),
        ("ACESTEP_CONFIG_PATH3", "text", "", "Model slot 3: a third DiT folder name (blank: no slot 3)."),
        (
            "ACESTEP_MAX_LOADED_DITS",
            "int",
            "0",
            "How many DiTs stay loaded at once (least recently used freed first); 0: by the tier.",
            {"minimum": 0},
        ),
        ("ACESTEP_LORA_DIR", "path", "", "LoRA folder (default `<root>/loras`)."),
        (
            "ACESTEP_TRAINING_DIR",
            "path",
            "",
            "Training folder: datasets, preprocessing caches and runs (default `<root>/training_data`).",
        ),
        ("ACESTEP_OUTPUT_DIR", "path", "", "Where generated audio is kept (default `<tmp>/api_audio`)."),
        (
            "ACESTEP_TMPDIR",
            "path",
            "",
            "Temporary files; wins over TMPDIR/TEMP/TMP (default `<root>/.cache/acestep/tmp`).",
        ),
        (
            "ACESTEP_CACHE_DIR",
            "path",
            "",
            "Cache folder (default `$XDG_CACHE_HOME` or `~/.cache`, then `/acestep`).",
        ),
    ),
    *_group(
        "memory",
        ("ACESTEP_DEVICE", "choice", "auto", "`auto`, `cuda`, `cuda:N`, `mps` or `cpu`."),
        ("ACESTEP_GPU_DEVICE", "text", "", "GPU index the worker uses."),
        ("ACESTEP_MAX_DURATION", "float", "", "Longest piece in seconds (default: the GPU tier's)."),
        ("ACESTEP_MAX_BATCH_SIZE", "int", "", "Largest batch (default: the GPU tier's)."),
        ("ACESTEP_OFFLOAD_TO_CPU", "bool", "auto", "Park the VAE and text encoder in CPU RAM between uses."),
        (
            "ACESTEP_OFFLOAD_DIT_TO_CPU",
            "bool",
            "auto",
            "Also park the DiT (only with ACESTEP_OFFLOAD_TO_CPU).",
        ),
        (
            "ACESTEP_KEEP_ALIVE",
            "duration",
            "5m",
            "How long models stay loaded after the last job (`-1` = never unload).",
        ),
        ("ACESTEP_KEEP_ALIVE_OVERRIDE", "bool", "true", "Whether a request may carry its own keep_alive."),
        ("ACESTEP_IDLE_UNLOAD", "choice", "free", "What an expired keep-alive does: `park` or `free`."),
        ("ACESTEP_UNLOAD_WHEN_BUSY", "choice", "wait", "An unload during a job: `wait` or `refuse`."),
        ("ACESTEP_PIN_MEMORY", "bool", "1", "Pinned host buffers for parking weights (`0` = plain copies)."),
        (
            "ACESTEP_VAE_DECODE_CHUNK_SIZE",
            "int",
            "",
            "VAE decode chunk in latent frames (default: by GPU memory).",
        ),
        (
            "ACESTEP_VAE_ENCODE_CHUNK_SECONDS",
            "float",
            "",
            "VAE encode chunk in seconds (default: by GPU memory).",
        ),
    ),
    *_group(
        "precision",
        ("ACESTEP_DTYPE", "choice", "auto", "Compute dtype: `auto`, bf16, fp16, fp16-mixed or fp32."),
        ("ACESTEP_ROPE", "choice", "fp32", "RoPE frequencies: `fp32` or `upstream` (bf16-rounded)."),
        ("ACESTEP_ATTENTION", "choice", "sdpa", "Attention kernel (`sdpa`, or one diffusers offers)."),
        ("ACESTEP_DIT_FAST", "choice", "off", "DiT fast path: `off`, `compile` or `graphs`."),
        (
            "ACESTEP_QUANTIZE",
            "text",
            "auto",
            "Weight quantization: `auto`, `none`, `int8`, `fp8`, `w8a8`, or per component "
            "(`dit=int8,text_encoder=none,lm=int8`); see docs/memory.md.",
        ),
        (
            "ACESTEP_QUANTIZATION",
            "text",
            "",
            "Upstream's name for ACESTEP_QUANTIZE, read when that is unset.",
        ),
        (
            "ACESTEP_QUANTIZE_CACHE",
            "text",
            "",
            "Folder of quantized weights kept for the next load (default `acestep/quantized` under "
            "ACESTEP_CACHE_DIR, `$XDG_CACHE_HOME` or `~/.cache`); `off`, `none`, `no`, `false` or `0` "
            "= no cache; see docs/memory.md.",
        ),
        ("ACESTEP_DIT_COMPILE_BACKEND", "text", "inductor", "torch.compile backend for the DiT fast path."),
    ),
    *_group(
        "lm",
        ("ACESTEP_INIT_LLM", "bool", "auto", "Load the 5 Hz LM (default: the GPU tier's)."),
        ("ACESTEP_LM_MODEL_PATH", "text", "", "LM folder or name (default: the first `acestep-5Hz-lm-*`)."),
        ("ACESTEP_LM_BACKEND", "choice", "pt", "Upstream's LM backend; only `pt` runs here (others warn)."),
        ("ACESTEP_LM_COMPILE", "bool", "", "`1` asks for the LM's compiled, static-cache fast path."),
    ),
    *_group(
        "lora",
        ("ACESTEP_LORA_FUSE", "bool", "", "Fuse the active LoRA set into the base weights."),
        ("ACESTEP_LORA_MAX_LOADED", "int", "4", "LoRA adapters kept loaded at once.", {"minimum": 1}),
    ),
    *_group(
        "worker",
        ("ACESTEP_WORKER_START_TIMEOUT", "float", "600", "Seconds the GPU worker may take to start."),
    ),
    *_group(
        "cluster",
        (
            "ACESTEP_QUEUE_URL",
            "url",
            "",
            "Redis URL of the shared queue (unset: the embedded queue).",
            {"secret": True},
        ),
        ("ACESTEP_QUEUE_NAMESPACE", "text", "acestep", "Key prefix in Redis."),
        (
            "ACESTEP_WORKER_HEARTBEAT_TIMEOUT",
            "int",
            "30",
            "Seconds of silence after which a worker is dead.",
            {"minimum": 2},
        ),
        ("ACESTEP_WORKER_STOP_TIMEOUT", "int", "120", "Seconds a stopping worker lets its job finish."),
        ("ACESTEP_GPU_QUEUE_URL", "url", "", "HTTP GPU-token queue (unset: off)."),
        ("ACESTEP_GPU_QUEUE_TOKENS", "int", "1000", "Tokens claimed per job.", {"minimum": 1}),
        ("ACESTEP_GPU_QUEUE_TIMEOUT", "float", "600", "Seconds to wait for a token claim."),
        (
            "ACESTEP_GPU_QUEUE_FAIL_OPEN",
            "bool",
            "off",
            "Run without tokens when the token queue is unreachable.",
        ),
    ),
    *_group(
        "foreign",
        (
            "MAX_CUDA_VRAM",
            "float",
            "",
            "Simulate a smaller GPU (GiB) for the tier choice.",
            {"foreign": True},
        ),
        ("CUDA_VISIBLE_DEVICES", "list", "", "CUDA's own GPU mask.", {"foreign": True}),
        ("XDG_CACHE_HOME", "path", "", "The cache root when ACESTEP_CACHE_DIR is unset.", {"foreign": True}),
        (
            "GRADIO_TEMP_DIR",
            "path",
            "",
            "Gradio's cache; set under ACESTEP_TMPDIR at start.",
            {"foreign": True},
        ),
        ("TMPDIR", "path", "", "Temporary files; set under ACESTEP_TMPDIR at start.", {"foreign": True}),
        ("TEMP", "path", "", "As TMPDIR (Windows).", {"foreign": True}),
        ("TMP", "path", "", "As TMPDIR (Windows).", {"foreign": True}),
    ),
)

DECLARED: dict[str, Setting] = {s.name: s for s in REGISTRY}
SECRET_SETTINGS = tuple(s.name for s in REGISTRY if s.secret)


def markdown() -> str:
    """``docs/configuration.md``: one section per group, one row per setting."""
    lines = [
        "# Configuration",
        "",
        "Every environment variable acestep reads. Generated from `acestep/setting_table.py` by",
        "`python -m acestep.settings --markdown > docs/configuration.md`; do not edit by hand.",
        "A process reads these once at start. Secret settings never reach the GPU worker or a log.",
    ]
    for group, title in GROUPS.items():
        lines += ["", f"## {title}", "", "| Name | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
        for s in (s for s in REGISTRY if s.group == group):
            flags = " (secret)" if s.secret else ""
            default = f"`{s.default}`" if s.default else "unset"
            lines.append(f"| `{s.name}` | {s.kind} | {default} | {s.doc}{flags} |")
    return "\n".join(lines) + "\n"
