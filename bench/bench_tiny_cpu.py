"""CPU benchmark of the tiny end-to-end run: pipeline overhead, not real-model speed.

Builds tiny **random** checkpoints (upstream layout, turbo and base) with
``acestep.testing.make_tiny_checkpoint`` and times ``AceStep.generate`` on the CPU:

- ``t2m_10s``: turbo text2music, 10 s, batch 1 (8 steps);
- ``lego_30s``: base lego on a 30 s synthetic source, 50 steps, batch 1;
- ``lego_120s``: base lego on a 120 s synthetic source, 50 steps, batch 1 (tiled, bounded decode).

Each case runs in a fresh subprocess (load, one cold call, then ``--warm`` warm calls), so its
peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss`` inside that process) is its own and not the
running maximum of earlier cases. ``--in-process`` runs every case in this process instead;
the RSS column is then cumulative. Cold = the first ``generate`` call after loading; warm =
the median of the following calls. Stage timings come from ``GenerationResult.timings``.

    python bench/bench_tiny_cpu.py                 # full run: about 4 minutes on 2 idle cores
    python bench/bench_tiny_cpu.py --quick         # 10/20 s sources, 10 steps, 1 warm call: about 1 minute
    python bench/bench_tiny_cpu.py --stage-rss     # plus each stage's own peak RSS (one extra call per case)
    python bench/bench_tiny_cpu.py --tune-malloc   # the same with glibc malloc keeping freed memory
    python bench/bench_tiny_cpu.py --json out.json # where the JSON goes (default bench/results/tiny_cpu.json)

Times are only comparable on an otherwise idle machine: the JSON records the load average and
CPU pressure before and after. On 2 cores, anything else running inflates the figures several times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import contention, git_commit, machine_facts, save_and_summarise

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "tiny_cpu.json"
STAGES = ("load_audio", "audio_encode", "text_encode", "dit", "vae_decode", "save")
SEED = 1
# --tune-malloc: keep freed memory in glibc's heap instead of returning every large block to the
# OS, so big temporaries (the VAE's 48 kHz activations) stop costing a page fault per 4 KiB.
TUNED_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(2**34),
    "MALLOC_TRIM_THRESHOLD_": str(2**34),
    "MALLOC_TOP_PAD_": str(2**30),
}


@dataclass(frozen=True)
class Case:
    name: str
    variant: str  # "turbo" | "base"
    task: str  # "text2music" | "lego"
    seconds: float  # text2music duration, or the lego source length
    steps: int

    @property
    def label(self) -> str:
        if self.task == "text2music":
            return f"{self.variant} text2music {self.seconds:g} s"
        return f"{self.variant} lego, {self.seconds:g} s source"


FULL_CASES = (
    Case("t2m_10s", "turbo", "text2music", 10.0, 8),
    Case("lego_30s", "base", "lego", 30.0, 50),
    Case("lego_120s", "base", "lego", 120.0, 50),
)
QUICK_CASES = (  # lego_20s is 500 frames: still more than one 256-frame decode tile
    Case("t2m_10s", "turbo", "text2music", 10.0, 8),
    Case("lego_10s", "base", "lego", 10.0, 10),
    Case("lego_20s", "base", "lego", 20.0, 10),
)


def _rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size so far (``ru_maxrss``; Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(who).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 2**10, 1)
    except OSError:
        pass
    return None


def _vm_hwm_mib() -> float | None:
    """Linux ``VmHWM``: the peak RSS of this process image only (reset by exec, unlike ``ru_maxrss``)."""
    return _proc_status_mib("VmHWM")


def stage_rss(engine, request, out_dir: Path) -> dict | None:
    """One extra ``generate`` call with the VAE encode, the DiT loop and the VAE decode wrapped.

    Each wrapped stage reports its peak RSS above the RSS it started at (Linux only: ``VmHWM`` is
    reset through ``/proc/self/clear_refs``). Run after ``ru_maxrss`` has been read, since the
    reset lowers it too.
    """
    clear = Path("/proc/self/clear_refs")
    if not clear.exists() or _vm_hwm_mib() is None:
        return None
    import acestep.engine.engine as engine_module

    peaks: dict[str, float] = {}

    def measured(inner, label):
        def call(*args, **kwargs):
            clear.write_text("5")
            before = _proc_status_mib("VmRSS")
            try:
                return inner(*args, **kwargs)
            finally:
                peaks[label] = max(peaks.get(label, 0.0), round(_vm_hwm_mib() - before, 1))

        return call

    denoise = engine_module.denoise
    engine.codec.encode = measured(engine.codec.encode, "vae_encode")
    engine.codec.decode = measured(engine.codec.decode, "vae_decode")
    engine_module.denoise = measured(denoise, "dit")
    try:
        engine.generate(request, out_dir)
    finally:
        engine_module.denoise = denoise
        del engine.codec.encode, engine.codec.decode
    return peaks


def _source_path(work: Path, seconds: float) -> Path:
    return work / f"source_{seconds:g}s.wav"


def _request(case: Case, work: Path):
    from acestep import GenerationRequest

    common = dict(
        caption="warm lo-fi piano with soft drums",
        seed=SEED,
        use_random_seed=False,
        batch_size=1,
        inference_steps=case.steps,
        audio_format="wav",
    )
    if case.task == "text2music":
        return GenerationRequest(task_type="text2music", audio_duration=case.seconds, **common)
    source = str(_source_path(work, case.seconds))
    return GenerationRequest(task_type="lego", track_name="vocals", src_audio=source, **common)


def run_case(case: Case, work: Path, warm: int, with_stage_rss: bool = False) -> dict:
    """Load the case's checkpoint, then one cold and ``warm`` warm ``generate`` calls."""
    import torch

    from acestep import AceStep

    rss_start = _rss_mib()
    started = time.perf_counter()
    engine = AceStep.from_pretrained(work / f"ckpt_{case.variant}", device="cpu")
    load_s = time.perf_counter() - started
    rss_loaded = _rss_mib()
    request = _request(case, work)
    out_dir = work / "outputs" / case.name
    calls = []
    for _ in range(1 + warm):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = engine.generate(request, out_dir)
        calls.append(
            {
                "wall_s": time.perf_counter() - started,
                "cpu_s": time.process_time() - cpu_started,
                "timings": dict(result.timings),
            }
        )
    peak, vm_hwm = _rss_mib(), _vm_hwm_mib()
    cold, warm_calls = calls[0], calls[1:]
    audio_s = result.items[0].duration

    def median(key: str) -> float | None:
        values = [c[key] if key in ("wall_s", "cpu_s") else c["timings"].get(key) for c in warm_calls]
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 4) if values else None

    return {
        "case": asdict(case),
        "label": case.label,
        "audio_s": audio_s,
        "frames": round(audio_s * 25),
        "torch_threads": torch.get_num_threads(),
        "load_s": round(load_s, 4),
        "cold": {
            "wall_s": round(cold["wall_s"], 4),
            "cpu_s": round(cold["cpu_s"], 4),
            "stages": cold["timings"],
        },
        "warm": {
            "calls": len(warm_calls),
            "wall_s": median("wall_s"),
            "cpu_s": median("cpu_s"),
            "stages": {key: median(key) for key in (*STAGES, "total")},
            "wall_s_all": [round(c["wall_s"], 4) for c in warm_calls],
        },
        "rss_mib": {
            "at_start": rss_start,
            "after_load": rss_loaded,
            "peak": peak,
            "vm_hwm": vm_hwm,
        },
        "stage_peak_rss_above_start_mib": stage_rss(engine, request, out_dir) if with_stage_rss else None,
    }


def _prepare(work: Path, cases: tuple[Case, ...]) -> dict:
    """Build the tiny checkpoints and the synthetic sources; return what it cost."""
    import soundfile as sf

    from acestep.testing import SAMPLE_RATE, make_tiny_checkpoint, synthetic_audio

    started = time.perf_counter()
    for variant in sorted({c.variant for c in cases}):
        make_tiny_checkpoint(work / f"ckpt_{variant}", layout="upstream", variant=variant, seed=0)
    checkpoints_s = time.perf_counter() - started
    for case in cases:
        if case.task == "lego":
            audio = synthetic_audio(case.seconds, seed=0)
            sf.write(str(_source_path(work, case.seconds)), audio, SAMPLE_RATE)
    return {"build_checkpoints_s": round(checkpoints_s, 2)}


def _in_subprocess(what: str, extra: list[str], work: Path, out: Path, env: dict | None = None) -> dict:
    """Run this script on one job in a fresh interpreter and return the JSON it wrote.

    Linux carries ``ru_maxrss`` across ``exec`` from the spawning process, so the parent keeps
    torch unimported and does no heavy work itself (checkpoints are built in a subprocess too).
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), *extra, "--work-dir", str(work), "--json", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=None if env is None else os.environ | env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{what} failed in its subprocess (exit {proc.returncode})")
    result = json.loads(out.read_text())
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    return result


def _quiet_logs() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    rss_note = "cumulative (in-process)" if report["mode"] == "in-process" else "per case (fresh process)"
    lines = [
        f"| case | audio s | steps | load s | cold s | warm s (median of {report['warm_calls']}) "
        f"| peak RSS MiB, {rss_note} | RSS after load MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['label']} | {r['audio_s']:g} | {r['case']['steps']} | {_fmt(r['load_s'])} "
            f"| {_fmt(r['cold']['wall_s'])} | {_fmt(r['warm']['wall_s'])} | {r['rss_mib']['peak']:.0f} "
            f"| {r['rss_mib']['after_load']:.0f} |"
        )
    lines += [
        "",
        "Per-stage seconds, cold / warm (median):",
        "",
        "| case | " + " | ".join(STAGES) + " | total |",
        "|---|" + "---:|" * (len(STAGES) + 1),
    ]
    for r in report["results"]:
        cold, warm = r["cold"]["stages"], r["warm"]["stages"]
        cells = [f"{_fmt(cold.get(k))} / {_fmt(warm.get(k))}" for k in (*STAGES, "total")]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    with_stages = [r for r in report["results"] if r.get("stage_peak_rss_above_start_mib")]
    if with_stages:
        lines += [
            "",
            "Peak RSS of each stage above the RSS it started at, MiB (one extra call, --stage-rss):",
            "",
            "| case | VAE encode | DiT loop | VAE decode |",
            "|---|---:|---:|---:|",
        ]
        for r in with_stages:
            peaks = r["stage_peak_rss_above_start_mib"]
            cells = [_fmt(peaks.get(k), 0) for k in ("vae_encode", "dit", "vae_decode")]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="JSON output path")
    parser.add_argument("--quick", action="store_true", help="10/20 s lego sources, 10 steps, 1 warm call")
    parser.add_argument("--warm", type=int, default=None, help="warm calls per case (default 3; --quick 1)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every case in this process (RSS is then cumulative over cases)",
    )
    parser.add_argument("--work-dir", default=None, help="keep inputs and outputs here (default: temp)")
    parser.add_argument(
        "--stage-rss",
        action="store_true",
        help="one extra call per case measuring each stage's peak RSS (Linux)",
    )
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="run the cases with glibc malloc keeping freed memory (TUNED_MALLOC_ENV)",
    )
    # Internal: the subprocess side (build the inputs, or run one case given as JSON).
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else FULL_CASES
    warm = args.warm if args.warm is not None else (1 if args.quick else 3)
    if warm < 1:
        parser.error("--warm must be at least 1")
    if args.in_process and (args.tune_malloc or args.stage_rss):
        parser.error("--tune-malloc and --stage-rss need a fresh process per case; drop --in-process")

    if args.prepare or args.worker:
        _quiet_logs()
        if args.prepare:
            result = _prepare(Path(args.work_dir), cases)
        else:
            result = run_case(Case(**json.loads(args.worker)), Path(args.work_dir), warm, args.stage_rss)
        Path(args.json).write_text(json.dumps(result))
        return 0

    started, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    contention_start = contention()
    with tempfile.TemporaryDirectory(prefix="acestep-bench-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        quick = ["--quick"] if args.quick else []
        if args.in_process:
            _quiet_logs()
            prep = _prepare(work, cases)
        else:
            prep = _in_subprocess("building checkpoints", ["--prepare", *quick], work, work / "prepare.json")
        print(f"built tiny checkpoints in {prep['build_checkpoints_s']:.1f} s", file=sys.stderr)
        results = []
        for case in cases:
            print(f"running {case.name} ...", file=sys.stderr, flush=True)
            if args.in_process:
                results.append(run_case(case, work, warm))
            else:
                extra = ["--worker", json.dumps(asdict(case)), "--warm", str(warm)]
                extra += ["--stage-rss"] if args.stage_rss else []
                out = work / f"result_{case.name}.json"
                env = TUNED_MALLOC_ENV if args.tune_malloc else None
                results.append(_in_subprocess(f"case {case.name}", extra, work, out, env))
    report = {
        "benchmark": "tiny end-to-end on CPU (random tiny models: pipeline overhead, not real-model speed)",
        "started": started_at,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "bench/bench_tiny_cpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(),
        "mode": "in-process" if args.in_process else "subprocess-per-case",
        "quick": args.quick,
        "malloc_env": TUNED_MALLOC_ENV if args.tune_malloc else "default",
        "warm_calls": warm,
        "contention_start": contention_start,
        "contention_end": contention(),
        **prep,
        "bench_wall_s": round(time.perf_counter() - started, 1),
        "rss_mib_parent_peak": _rss_mib(),
        # --stage-rss resets each child's peak (clear_refs), which lowers what RUSAGE_CHILDREN reports.
        "rss_mib_children_max_incl_builder": (
            None if args.stage_rss or args.in_process else _rss_mib(resource.RUSAGE_CHILDREN)
        ),
        "machine": machine_facts(),
        "results": results,
    }
    save_and_summarise(report, Path(args.json), markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
