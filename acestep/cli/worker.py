"""``acestep-worker``: one GPU's worker in a Redis-backed cluster (``ACESTEP_QUEUE_URL``).

Run one per GPU (``--gpu 0``, ``--gpu 1``...), on this host or others; each has its own memory
manager and keep-alive, and consumes the queue of the DiT it serves. Results go to the shared
results directory (``ACESTEP_OUTPUT_DIR``), which the API servers must see at the same path.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping

from acestep.cli.lora import _lora_dir_flag
from acestep.cli.memory_flags import _lm_switch_flag, _memory_env, _memory_flags
from acestep.cli.version import add_version_flag
from acestep.settings import reload as reload_settings
from acestep.settings import value as setting_value


def _worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="acestep-worker", description="ACE-Step 1.5 cluster worker (one per GPU)"
    )
    add_version_flag(p)
    p.add_argument("--gpu", default=None, help="the GPU index this worker uses (sets ACESTEP_GPU_DEVICE)")
    p.add_argument(
        "--queue-url", default=None, help="Redis URL, e.g. redis://host:6379/0 (ACESTEP_QUEUE_URL)"
    )
    p.add_argument("--checkpoint", default=None, help="checkpoints root (default: ACESTEP_CHECKPOINTS_DIR)")
    p.add_argument("--config-path", "--dit", default=None, dest="dit", help="DiT folder this worker serves")
    p.add_argument("--lm-model-path", default=None, help="LM folder name or path (ACESTEP_LM_MODEL_PATH)")
    p.add_argument("--keep-alive", default=None, help="idle time before unloading (ACESTEP_KEEP_ALIVE)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (ACESTEP_DEVICE)")
    p.add_argument("--output-dir", default=None, help="shared results directory (ACESTEP_OUTPUT_DIR)")
    p.add_argument(
        "--name", default=None, help="worker name (default: <host>-gpu<N>); the id adds a random part"
    )
    p.add_argument(
        "--engine",
        choices=("model", "noop"),
        default="model",
        help="noop: no model, every job writes a short silent file (queue benchmarks and tests)",
    )
    p.add_argument("--no-preload", action="store_true", help="load the model on the first job, not at start")
    _lora_dir_flag(p)
    _lm_switch_flag(p)
    _memory_flags(p)
    return p


def worker_main(argv: list[str] | None = None) -> int:
    args = _worker_parser().parse_args(argv)
    try:
        import dramatiq  # noqa: F401 - the cluster extra is what this command needs
        import redis  # noqa: F401
    except ImportError as exc:
        print(
            f"error: acestep-worker needs the cluster extra (pip install 'acestep[cluster]'): {exc}",
            file=sys.stderr,
        )
        return 2
    from acestep.checkpoints import CheckpointError
    from acestep.cluster.settings import ClusterConfigError, ClusterSettings, default_worker_name
    from acestep.serving.config import ServerConfig, prepare_environment

    prepare_environment()
    overrides = {
        "ACESTEP_KEEP_ALIVE": args.keep_alive,
        "ACESTEP_LM_MODEL_PATH": args.lm_model_path,
        "ACESTEP_OUTPUT_DIR": args.output_dir,
        "ACESTEP_GPU_DEVICE": args.gpu,
        "ACESTEP_LORA_DIR": args.lora_dir,
    }
    os.environ.update({k: v for k, v in overrides.items() if v is not None})
    snapshot = reload_settings()  # read once, with .env and the flags in force; passed down
    logging.basicConfig(level=logging.WARNING)  # dramatiq logs through the standard library
    try:
        settings = ClusterSettings.from_env(snapshot, url=args.queue_url)
        if settings is None:
            raise ClusterConfigError("no queue: set ACESTEP_QUEUE_URL or --queue-url (redis://host:6379/0)")
        results_dir = ServerConfig.from_env(snapshot).results_dir
        executor = _executor(args, snapshot)
    except (ClusterConfigError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from acestep.cluster.worker import ClusterWorker

    worker = ClusterWorker(
        settings, executor, results_dir, args.name or default_worker_name(args.gpu), gpu=args.gpu
    )
    worker.serve_forever()
    return 0


def _executor(args: argparse.Namespace, snapshot: Mapping[str, str]):
    from acestep.cluster.executors import ManagerExecutor, NoopExecutor

    if args.engine == "noop":
        seconds = setting_value(snapshot, "ACESTEP_NOOP_SECONDS")
        return NoopExecutor(model=args.dit or "noop", seconds=seconds)
    from acestep.checkpoints.layout import resolve
    from acestep.checkpoints.lm_folders import lm_availability
    from acestep.memory.manager import MemoryManager
    from acestep.settings import checkpoints_dir
    from acestep.worker.runner import EngineSpec

    checkpoint = args.checkpoint or str(checkpoints_dir(snapshot))
    paths = resolve(checkpoint, args.dit or snapshot.get("ACESTEP_CONFIG_PATH") or None)
    env = _memory_env(args)
    if args.init_llm is not None:
        env["ACESTEP_INIT_LLM"] = str(args.init_llm)
    manager = MemoryManager(env=env)
    manager.lm_name = lm_availability(paths.root)[0]
    spec = EngineSpec(checkpoint, dit=paths.dit_name)
    tasks = list(paths.variant.supported_tasks)
    # The variant as adapters record it (xl-base for the XL base): API servers match LoRAs by it.
    executor = ManagerExecutor(
        manager, spec, paths.dit_name, paths.variant.tag, tasks, preload=not args.no_preload
    )
    if snapshot.get("ACESTEP_GPU_QUEUE_URL"):
        from acestep.jobs.gpu_tokens import install_gpu_tokens

        install_gpu_tokens(executor.supervisor.dispatcher)
    return executor
