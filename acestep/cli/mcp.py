"""``acestep-mcp``: the MCP tools over stdio, with their own memory manager, worker, queue and
``JobService`` (the REST app builds its own in serving/app.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class StandaloneBackend:
    def __init__(self, service, manager, config, default_steps: int):
        self.service, self.manager = service, manager
        self.input_roots: list[Path] = config.input_roots
        self.uploads_dir: Path = config.uploads_dir
        self.max_upload_bytes: int = config.max_upload_bytes
        self.default_steps = default_steps


def _mcp_parser() -> argparse.ArgumentParser:
    """The flags, parsed before anything is read: ``--help`` and ``--version`` need no checkpoint.
    (The console script's entry point lives in the CLI, the top layer, which may build every part.)"""
    from acestep.cli.version import add_version_flag

    p = argparse.ArgumentParser(
        prog="acestep-mcp",
        description="ACE-Step 1.5 MCP tools over stdio (stdout is the MCP channel; logs go to stderr). "
        "Settings come from the ACESTEP_* variables and .env, as for acestep-api.",
    )
    add_version_flag(p)
    p.add_argument("--checkpoint", default=None, help="checkpoints root (default: ACESTEP_CHECKPOINTS_DIR)")
    p.add_argument(
        "--config-path",
        "--dit",
        default=None,
        dest="dit",
        help="DiT folder name (default: ACESTEP_CONFIG_PATH)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _mcp_parser().parse_args(argv)
    from acestep.checkpoints import CheckpointError
    from acestep.checkpoints.layout import resolve
    from acestep.checkpoints.lm_folders import lm_availability
    from acestep.jobs.queue import LocalJobQueue
    from acestep.jobs.service import JobService
    from acestep.lora.selection import LoraSelection
    from acestep.mcp.tools import build_server
    from acestep.memory.manager import MemoryManager
    from acestep.serving.config import ServerConfig, prepare_environment
    from acestep.worker.runner import EngineSpec
    from acestep.worker.supervisor import Supervisor

    prepare_environment()
    config = ServerConfig.from_env(checkpoint=args.checkpoint, dit=args.dit)
    try:
        paths = resolve(config.checkpoint, config.dit)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lm = lm_availability(paths.root)
    manager = Supervisor(MemoryManager())
    manager.lm_name = lm[0]
    manager.start(EngineSpec(config.checkpoint, dit=paths.dit_name), in_process=config.in_process_worker)
    loras = LoraSelection(paths.variant.tag)
    queue = LocalJobQueue(
        manager,
        config.results_dir,
        config.queue_maxsize,
        config.result_ttl_s,
        config.cleanup_interval_s,
        loras=loras,
        checkpoint=paths,
        uploads_dir=config.uploads_dir,
    )
    service = JobService(queue, manager, loras, *lm)  # the one front door, as in serving/app.py
    try:
        backend = StandaloneBackend(service, manager, config, paths.variant.default_steps)
        build_server(backend, training=config.enable_training).run("stdio")
    finally:
        queue.close()
        manager.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
