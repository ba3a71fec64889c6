"""5 Hz LM decode speed at the real 0.6B / 1.7B / 4B configurations (random weights).

For each size: phase-2 code writing (CFG, two rows, the constrained codes-only FSM) eagerly, and,
with ``--compile`` on CUDA, through the guarded fast path (static KV cache, compiled and
CUDA-graph-captured decode step). Also records whether the fast path's capture left the global
CPU and CUDA RNG exactly as it was (the DiT's noise then cannot change), and the LM's own
determinism (the same seed twice gives the same codes).

    python bench/bench_lm.py --device cuda --compile               # all three sizes
    python bench/bench_lm.py --device cpu --sizes 0.6B --codes 20  # anywhere (slow)
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from _common import git_commit, write_report

from acestep.checkpoints.component_bytes import LMS  # the published configurations
from acestep.lm import prompts
from acestep.lm.constraints import CotConstraint
from acestep.lm.model import LanguageModel
from acestep.lm.sampling import SamplingParams
from acestep.testing import _tiny_lm_tokenizer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "lm.json"
COT = (
    "<think>\nbpm: 120\ncaption: warm piano ballad\nduration: 40\nkeyscale: C major\n"
    "language: en\ntimesignature: 4\n</think>"
)


def build(size: str, device: torch.device, dtype: torch.dtype, tokenizer) -> LanguageModel:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**LMS[size], eos_token_id=tokenizer.eos_token_id)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype).eval()
    return LanguageModel(Path(f"acestep-5Hz-lm-{size}"), tokenizer, model)


def write_codes(lm: LanguageModel, codes: int, seed: int) -> tuple[list[int], float]:
    tok = lm.tokenizer
    prompt = prompts.phase2_prompt(tok, "warm piano ballad", "[verse]\nla la la", COT)
    uncond = prompts.unconditional_prompt(tok, "[verse]\nla la la", "NO USER INPUT", COT)
    constraint = CotConstraint(lm.tables, phase="codes", target_codes=codes)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    run = lm.run(prompt, uncond, constraint, SamplingParams(cfg_scale=2.0), seed, codes + 8)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return run.token_ids, time.perf_counter() - started


def rng_states(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return torch.get_rng_state(), cuda


def measure(size: str, args, tokenizer) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = build(size, device, dtype, tokenizer)
    write_codes(lm, 4, 0)  # warm-up (kernels, allocator)
    _, first = write_codes(lm, 1, 7)  # prefill + one step: separates the prompt's cost
    tokens, seconds = write_codes(lm, args.codes, 7)
    again, _ = write_codes(lm, args.codes, 7)
    row = {
        "size": size,
        "dtype": str(dtype),
        "codes": len(tokens),
        "eager_seconds": round(seconds, 3),
        "eager_tokens_per_s": round(len(tokens) / seconds, 1),
        "eager_prefill_seconds": round(first, 3),
        "eager_decode_tokens_per_s": round((len(tokens) - 1) / max(seconds - first, 1e-9), 1),
        "same_seed_same_codes": tokens == again,
    }
    if args.compile and device.type == "cuda":
        torch.cuda.manual_seed(1234)
        expected_noise = torch.randn(4, 64, device=device)
        torch.cuda.manual_seed(1234)
        before = rng_states(device)
        started = time.perf_counter()
        ok = lm.try_fast_path()
        row["capture_seconds"] = round(time.perf_counter() - started, 2)
        after = rng_states(device)
        row["fast_path"] = lm.fast_path
        row["rng_unchanged_by_capture"] = bool(
            torch.equal(before[0], after[0])
            and all(torch.equal(a, b) for a, b in zip(before[1], after[1], strict=True))
        )
        row["noise_unchanged_after_capture"] = bool(
            torch.equal(torch.randn(4, 64, device=device), expected_noise)
        )
        if ok:
            fast, fast_seconds = write_codes(lm, args.codes, 7)
            row["compiled_seconds"] = round(fast_seconds, 3)
            row["compiled_tokens_per_s"] = round(len(fast) / fast_seconds, 1)
            row["compiled_codes_equal_eager"] = fast == tokens
    del lm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="0.6B,1.7B,4B")
    parser.add_argument("--codes", type=int, default=200, help="codes to write (5 per second of audio)")
    parser.add_argument("--compile", action="store_true", help="also try the guarded fast path (CUDA)")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory():
        tokenizer = _tiny_lm_tokenizer(65535)  # byte-level text, the real 65,535 code tokens
    rows = [measure(size.strip(), args, tokenizer) for size in args.sizes.split(",")]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    report = {
        "benchmark": "lm",
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name or args.device,
        "torch": torch.__version__,
        "rows": rows,
    }
    write_report(report, args.json)


if __name__ == "__main__":
    main()
