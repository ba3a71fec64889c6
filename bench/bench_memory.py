"""Memory lifecycle on a GPU: lego peak VRAM, VRAM after park and free, wake times, lowest tier.

Writes an upstream ``checkpoints/`` root with random weights at the real 2B base configuration
(DiT, condition encoder, audio tokenizer, real Oobleck VAE, a Qwen3-Embedding-0.6B-sized text
encoder; the tokenizer is the tiny byte-level one, which only changes token ids), then, through
``MemoryManager`` and the GPU worker process exactly as a server runs them:

1. lego on 120 s of source audio, 50 steps, batch 1, no LM, with the tier's own plan: job time,
   the worker's peak allocated / reserved VRAM, and NVML's peak for the worker process (polled);
2. ``park``: VRAM left in the worker; then wake (``load``) time;
3. ``free``: the worker process ends; NVML bytes for it after; then load-from-free time;
4. the same lego with ``MAX_CUDA_VRAM=4`` (tier1: only the running component on the GPU).

    python bench/bench_memory.py                          # on a CUDA machine (writes ~6 GB)
    python bench/bench_memory.py --size tiny --device cpu # anywhere: checks the script end to end
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import soundfile as sf
import torch
from _common import git_commit, write_report
from speed.models import TEXT_ENCODER as QWEN3_EMBEDDING_06B

from acestep import GenerationRequest
from acestep.memory.gpus import default_source
from acestep.memory.manager import MemoryManager
from acestep.testing import _tiny_tokenizer, make_tiny_checkpoint, synthetic_audio
from acestep.worker.runner import EngineSpec
from acestep.worker.supervisor import Supervisor

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "memory.json"


def write_real_checkpoint(root: Path) -> Path:
    """The real 2B base layout with random weights (bf16 DiT and text encoder, fp32 VAE)."""
    from transformers import Qwen3Config, Qwen3Model

    from acestep.checkpoints.loading import DIT_CLASSES
    from acestep.testing import _write_upstream

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_gpu_real_config import build_dit, build_vae, real_dit_config

    cpu = torch.device("cpu")
    modules = build_dit("base", cpu, torch.bfloat16, names=tuple(DIT_CLASSES))
    modules["vae"] = build_vae(cpu, torch.float32)
    modules["text_encoder"] = Qwen3Model(Qwen3Config(**QWEN3_EMBEDDING_06B, architectures=["Qwen3Model"]))
    modules["text_encoder"].to(torch.bfloat16)
    silence = 0.01 * torch.randn(1, 64, 750, generator=torch.Generator().manual_seed(0))
    modules["condition_encoder"].register_buffer("silence_latent", silence.transpose(1, 2).contiguous())
    built = {
        "modules": modules,
        "tokenizer": _tiny_tokenizer(),
        "dit_config": real_dit_config("base"),
        "silence": silence,
    }
    _write_upstream(root, "base", built)
    return root


class NvmlPeak:
    """Polls NVML for a process's GPU bytes while a job runs (includes the CUDA context)."""

    def __init__(self, source, pid_of):
        self.source, self.pid_of, self.peak, self._stop = source, pid_of, None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            pid = self.pid_of()
            value = self.source.process_gpu_bytes(pid) if pid else None
            if value is not None:
                self.peak = max(self.peak or 0, value)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def run_plan(name: str, checkpoint: Path, source_wav: Path, env: dict, args) -> dict:
    source = default_source()
    decider = MemoryManager(source=source, env=env)
    manager = Supervisor(decider)  # owns the worker; ``decider`` holds the limits and plan
    dispatcher = manager.start(EngineSpec(str(checkpoint), dit="acestep-v15-base", device="auto"))
    runner = dispatcher.runner
    request = GenerationRequest(
        task_type="lego",
        track_name="vocals",
        src_audio=str(source_wav),
        caption="soulful indie vocalist, warm, wordless melody, expressive",
        bpm=120,
        inference_steps=args.steps,
        batch_size=1,
        seed=0,
        audio_format="flac",
    )
    out = {"plan": name, "tier": decider.limits.tier.name, "residency_plan": decider.plan.as_dict()}
    with tempfile.TemporaryDirectory() as outputs:
        started = time.perf_counter()
        with NvmlPeak(source, lambda: runner.pid) as nvml:
            job = manager.submit(request, outputs).wait()
        if job.state != "succeeded":
            raise SystemExit(f"{name}: lego failed: {job.error}")
        memory = runner.status()["memory"]
        out["lego"] = {
            "wall_s": round(time.perf_counter() - started, 2),
            "timings": job.result.timings,
            "peak_allocated_mib": mib(memory["peak_allocated_bytes"]),
            "peak_reserved_mib": mib(memory["peak_reserved_bytes"]),
            "nvml_peak_process_mib": mib(nvml.peak),
        }
    park = manager.unload("park")
    out["park"] = {"seconds": park["seconds"], "after": park["after"]}
    out["wake_from_park_s"] = manager.load()["seconds"]
    free = manager.unload("free")
    out["free"] = {
        "seconds": free["seconds"],
        "before": free["before"],
        "after": free["after"],
        "note": free["note"],  # the GPU's used memory after, against before the worker started
        "gpu_used_before_worker_mib": mib(runner.baseline_gpu_used),
        "gpu_used_after_free_mib": mib(free["after"]["gpu_used_bytes"]),
    }
    started = time.perf_counter()
    manager.load()
    out["load_from_free_s"] = round(time.perf_counter() - started, 2)  # includes the process start
    manager.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="acestep-bench-memory-"))
    root = work / "checkpoints"
    if not (root / "acestep-v15-base" / "model.safetensors").is_file():
        if args.size == "real":
            write_real_checkpoint(root)
        else:
            make_tiny_checkpoint(root, layout="upstream", variant="base", seed=0)
    source_wav = work / "source.wav"
    sf.write(source_wav, synthetic_audio(args.seconds, seed=1), 48000)
    base_env = {"ACESTEP_DEVICE": args.device.split(":")[0], "ACESTEP_KEEP_ALIVE": "-1"}
    report = {
        "command": "python bench/bench_memory.py " + " ".join(argv or sys.argv[1:]),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "size": args.size,
        "seconds": args.seconds,
        "steps": args.steps,
        "plans": [
            run_plan("tier default", root, source_wav, base_env, args),
            run_plan("MAX_CUDA_VRAM=4 (tier1)", root, source_wav, base_env | {"MAX_CUDA_VRAM": "4"}, args),
        ],
    }
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
