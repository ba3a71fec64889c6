"""``LanguageModel``: one loaded 5 Hz LM folder (tokenizer, Qwen3 causal LM) and how it decodes.

Loading is safe (safetensors only, no remote code). Decoding is eager by default on every
device; ``ACESTEP_LM_COMPILE=1`` asks for the fast path (a static KV cache and a compiled,
CUDA-graph-captured decode step), which is tried once inside :func:`guarded_capture` and
abandoned for the process on any failure.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger

from acestep.lm.decoder import Forward, decode, eager_forward, last_logits
from acestep.lm.sampling import SamplingParams
from acestep.lm.vocab import LmVocab
from acestep.memory.capture import guarded_capture
from acestep.settings import TRUE_WORDS
from acestep.settings import current as current_settings
from acestep.tasks import MAX_DURATION_S

MAX_MODEL_LEN = 4096
CAPTURE_NAME = "5Hz LM fast path"


class LmLoadError(RuntimeError):
    """An LM folder cannot be loaded; the message says what is wrong with it."""


@dataclass
class LmRun:
    token_ids: list[int]
    text: str
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


def compile_requested(env: dict[str, str] | None = None) -> bool:
    value = ((env if env is not None else current_settings()).get("ACESTEP_LM_COMPILE") or "").strip().lower()
    return value in TRUE_WORDS  # off unless switched on


def check_folder(folder: Path) -> dict:
    """The folder's config, after checking it is a Qwen3 causal LM with safetensors weights."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise LmLoadError(f"{folder} is not an LM folder (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise LmLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    if config.get("model_type") != "qwen3":
        raise LmLoadError(f"{folder.name} is a {config.get('model_type')!r} model; the 5Hz LM is qwen3")
    if not any(folder.glob("*.safetensors")):
        raise LmLoadError(f"{folder.name} has no .safetensors weights (pickled weights are not loaded)")
    return config


class LanguageModel:
    """A loaded LM. ``model`` is the module the memory plan moves; decoding runs where it is."""

    def __init__(self, folder: Path, tokenizer, model: torch.nn.Module):
        self.folder = folder
        self.name = folder.name
        self.tokenizer = tokenizer
        self.model = model
        self.vocab = LmVocab.from_tokenizer(tokenizer)
        positions = getattr(model.config, "max_position_embeddings", MAX_MODEL_LEN) or MAX_MODEL_LEN
        self.max_model_len = min(MAX_MODEL_LEN, int(positions))
        self._tables = None
        # The CoT's duration domain; the engine lowers it to its tier's limit.
        self.max_duration = int(MAX_DURATION_S)
        self._fast: Forward | None = None
        self._caches: dict[int, object] = {}  # the fast path's static KV caches, by row count
        self.fast_path = "off"  # off | on | failed

    @classmethod
    def load(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> LanguageModel:
        """Load to the CPU (the memory plan places it); no ``trust_remote_code``, no pickle.

        ``dtype`` is the precision plan's ``lm`` entry (``acestep/memory/precision.py``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        check_folder(folder)
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
            model.eval()
            lm = cls(folder, tokenizer, model)
        except (OSError, ValueError) as exc:  # a broken folder is the server's fault, not the request's
            raise LmLoadError(f"cannot load the LM {folder.name}: {exc}") from exc
        logger.info(f"loaded LM {folder.name} as {dtype} in {time.perf_counter() - started:.1f} s")
        return lm

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tables(self):
        if self._tables is None:
            from acestep.lm.constraints import ConstraintTables

            try:
                self._tables = ConstraintTables.build(
                    self.tokenizer, self.vocab, max_duration=self.max_duration
                )
            except ValueError as exc:  # the tokenizer cannot express the CoT: a broken LM folder
                raise LmLoadError(f"the LM tokenizer of {self.name} cannot be constrained: {exc}") from exc
        return self._tables

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def run(
        self,
        prompt: str,
        uncond_prompt: str | None,
        constraint,
        params: SamplingParams,
        seed: int,
        max_new_tokens: int,
    ) -> LmRun:
        """Decode after ``prompt``; ``uncond_prompt`` adds the CFG row when ``params`` use CFG.

        The draw uses a CPU generator seeded with ``seed``: same prompt, seed and settings on the
        same device give the same tokens, and torch's global RNG is never read or advanced.
        """
        rows = [self.encode(prompt)]
        if uncond_prompt is not None and params.uses_cfg:
            rows.append(self.encode(uncond_prompt))
        budget = self.max_model_len - 64 - max(len(r) for r in rows)
        if budget <= 0:
            raise ValueError(f"the LM prompt is {len(rows[0])} tokens, too long for {self.max_model_len}")
        started = time.perf_counter()

        def attempt(forward: Forward, cache: object, fsm) -> list[int]:
            generator = torch.Generator().manual_seed(int(seed))  # a fresh one per attempt
            limit = min(max_new_tokens, budget)
            return decode(forward, cache, rows, fsm, params, generator, limit, *self._ids, self.device)

        tokens = None
        if self._fast is not None and self.device.type == "cuda":
            # A failed fast attempt must not leave the FSM advanced (its tables are shared, not copied).
            snapshot = constraint.clone() if constraint is not None else None
            # Graphs may be re-recorded here (a moved model, a new shape): still inside the guard.
            cache = self._caches[len(rows)]
            cache.reset()
            tokens = guarded_capture(CAPTURE_NAME, lambda: attempt(self._fast, cache, constraint))
            if tokens is None:
                self._drop_fast()
                constraint = snapshot
        if tokens is None:
            from transformers import DynamicCache

            tokens = attempt(eager_forward(self.model), DynamicCache(config=self.model.config), constraint)
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        return LmRun(tokens, text, time.perf_counter() - started)

    @property
    def _ids(self) -> tuple[int, int]:
        return self.vocab.eos_id, self.vocab.pad_id

    # -- the optional fast path -------------------------------------------------------------

    def try_fast_path(self) -> bool:
        """Compile and capture the decode step once; on failure stay eager (RNG untouched)."""
        if self.fast_path != "off":
            return self.fast_path == "on"
        fast = guarded_capture(CAPTURE_NAME, self._capture)
        if fast is None:
            self._drop_fast()
        else:
            self._fast = fast
            self.fast_path = "on"
        return fast is not None

    def _drop_fast(self) -> None:
        """Eager for the rest of the process: partial graphs, their pool and the caches go."""
        self._fast, self._caches, self.fast_path = None, {}, "failed"
        try:
            torch.compiler.reset()
        except Exception as exc:  # resetting compile state is best effort
            logger.warning(f"torch.compiler.reset after a failed capture: {exc}")
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def _capture(self) -> Forward:
        if self.device.type != "cuda":
            raise RuntimeError(f"the fast path needs the LM on a CUDA device, it is on {self.device}")
        from transformers import StaticCache

        forward = static_forward(self.model, self.max_model_len)
        # One cache per row count (1: no CFG; 2: CFG), kept for the process: a new cache per run
        # would move its addresses and re-record the graphs on every request.
        self._caches = {
            rows: StaticCache(config=self.model.config, max_cache_len=self.max_model_len) for rows in (1, 2)
        }
        for rows, cache in self._caches.items():
            for _ in range(3):  # compile, then record the graphs; nothing here draws at random
                cache.reset()
                decode_warmup(forward, cache, rows, self.vocab.pad_id, self.device)
        torch.cuda.synchronize()
        return forward


def static_forward(model: torch.nn.Module, max_len: int) -> Forward:
    """Prefill eager; single-token steps through one compiled function of fixed shapes (the mask
    is always ``max_len`` wide; the static cache tracks its own write position)."""
    compiled = torch.compile(model.forward, mode="reduce-overhead", dynamic=False, fullgraph=False)

    def forward(input_ids, attention_mask, position_ids, cache):
        full = torch.zeros(
            attention_mask.shape[0], max_len, dtype=attention_mask.dtype, device=attention_mask.device
        )
        full[:, : attention_mask.shape[1]] = attention_mask
        call = compiled if input_ids.shape[1] == 1 else model.forward
        logits, _ = last_logits(call, input_ids, full, position_ids, cache)
        return logits.clone(), cache  # the graph's output buffer is reused by the next replay

    return forward


def decode_warmup(forward: Forward, cache: object, rows: int, pad_id: int, device: torch.device) -> None:
    ids = torch.full((rows, 8), pad_id, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    positions = torch.arange(8, device=device).expand(rows, -1)
    forward(ids, mask, positions, cache)
    for step in range(3):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        forward(ids[:, :1], mask, positions[:, -1:] + 1 + step, cache)
