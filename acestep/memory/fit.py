"""Does a model fit the card? Computed weight bytes plus working memory, stage by stage.

Torch-free, so a server decides before its worker loads anything. The weights come from
``weight_table.py`` (computed from the real configurations on the meta device, per dtype and
quantization mode). The working memory of each stage is estimated from the shapes and the
tier's largest job (its maximum duration and batch):

- VAE encode: one tile of the source at a time; ``ENCODE_GIB_PER_SECOND`` per second of tile,
  taken from the one GPU measurement (the T4 plan's 7.96 GiB peak at a 120 s lego, BENCHMARKS.md,
  less the resident fp16 DiT and VAE, over a 30 s tile);
- VAE decode: one tile of latents at a time, ``DECODE_GIB_PER_FRAME`` (about 7.5 GiB for a
  3,000-frame tile in bf16, the figure the decode tile table was built from);
- diffusion: the activations of one transformer block for every token of the batch, twice for
  classifier-free guidance, with ``DIT_WORKING_FACTOR`` for the allocator's rounding and the
  transient copies; attention through SDPA's fused kernels, so nothing grows with tokens squared;
- the LM: its KV cache for the longest prompt and song;
- text and condition encoding: ``ENCODER_WORKING_GIB`` (at most 2,048 lyric tokens).

The plan is escalated from the tier's own (upstream's defaults and the operator's settings) until
the largest stage fits: the text encoder, VAE and LM offloaded, then the DiT too (one component on
the GPU at a time), then the DiT streamed block by block (acestep/memory/streaming.py). Nothing
fitting is a :class:`MemoryLimitError` naming the stage, its bytes and what would help. The
figures are computed, not measured, except where docs/memory.md says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from acestep.memory.limits import Limits, MemoryLimitError
from acestep.memory.precision import PrecisionPlan
from acestep.memory.quantization import NONE, QuantizationPlan
from acestep.memory.residency import ResidencyPlan, plan_for, tightened
from acestep.memory.tiers import lm_size_of
from acestep.memory.weight_table import SHAPES, WEIGHT_BYTES
from acestep.tasks import LATENT_FRAMES_PER_SECOND

GIB = 2**30
CONTEXT_RESERVE_GIB = 0.5  # what the CUDA context itself takes on a real card of that size
ENCODE_GIB_PER_SECOND = (7.96 - 4.46 - 0.31) / 30  # half precision; float32 holds twice
DECODE_GIB_PER_FRAME = 7.5 / 3000
DIT_WORKING_FACTOR = 2.0
ENCODER_WORKING_GIB = 0.25
LM_PROMPT_TOKENS = 2048 + 256  # lyrics and caption, as the DiT's text prompt is cut
CODES_PER_SECOND = 5
STREAM_GROUPS_ON_GPU = 2  # the running block and the next one, prefetched on the side stream

# Ratings, best first: the tier's plan as it is; with the text encoder, VAE and LM on the CPU
# between uses; one component on the GPU at a time; the DiT streamed; nothing fits.
YES, WITH_OFFLOAD, MARGINAL, STREAMED, NO = "yes", "with offload", "marginal", "streamed", "no"
RATINGS = (YES, WITH_OFFLOAD, MARGINAL, STREAMED, NO)

# Each stage and the component it runs; "lm" only when the LM is loaded.
STAGES = {
    "lm": "lm",
    "text encoding": "text_encoder",
    "VAE encode": "vae",
    "condition encoding": "condition_encoder",
    "diffusion": "dit",
    "VAE decode": "vae",
}
LIGHT = ("lm", "text_encoder", "vae")  # offloaded by offload_to_cpu
HEAVY = ("condition_encoder", "dit")  # offloaded by offload_dit_to_cpu too
# The networks that move with the condition encoder (memory/residency.py's MODULES).
CONDITION_PARTS = ("condition_encoder", "audio_tokenizer", "audio_token_detokenizer")


def decode_tile_frames(gib: float | None) -> int:
    """Latent frames per VAE decode tile on a card of ``gib`` (None: the CPU): larger on bigger
    cards (upstream's table). From the card's size, never from what is free: tiling changes the
    audio slightly, and a seed must give the same audio on the same machine every time."""
    if gib is None:
        return 256
    if gib >= 48:  # data-centre cards: 123 s in one tile
        return 3072
    return 512 if gib >= 24 else 384 if gib >= 16 else 256 if gib >= 12 else 128


def encode_tile_seconds(gib: float | None) -> int:
    """Seconds of audio per VAE encode tile: 30, or 15 on cards below 16 GiB. Upstream halves
    it only at 8 GB or less; on the 12-16 GB tiers the DiT stays on the GPU during the encode, and
    the 30 s tile is what took the T4 plan to 7.96 GiB (docs/memory.md, "Fit")."""
    return 15 if gib is not None and gib < 16 else 30


def dit_key(is_xl: bool) -> str:
    return "dit-xl" if is_xl else "dit-2b"


def dtype_key(dtype: str) -> str:
    """The weight table's dtype for a precision name: float16 stores as bfloat16 does."""
    return "float32" if dtype in ("float32", "fp32") else "bfloat16"


def _row(component: str, dtype: str, mode: str) -> dict[str, int]:
    stored = NONE if mode == NONE else "int8"  # fp8 and w8a8 store 1 byte a weight, as int8
    return WEIGHT_BYTES[(component, dtype_key(dtype), stored)]


@dataclass(frozen=True)
class ModelBytes:
    """GiB of each component on the GPU (whole), and what streaming the DiT holds instead."""

    whole: dict[str, float]
    dit_streamed: float
    dit_name: str
    lm_name: str | None

    @classmethod
    def of(
        cls, is_xl: bool, dtype: str, lm_dtype: str, quantization: QuantizationPlan, lm_size: str | None
    ) -> ModelBytes:
        dit = dit_key(is_xl)
        row = _row(dit, dtype, quantization.dit)
        layers = SHAPES[dit]["num_hidden_layers"]
        outside_blocks = row["transformer"] - layers * row["transformer_block"]
        whole = {
            "text_encoder": sum(_row("text_encoder", dtype, quantization.text_encoder).values()),
            "vae": sum(_row("vae", dtype, NONE).values()),
            "condition_encoder": sum(row[part] for part in CONDITION_PARTS),
            "dit": row["transformer"],
        }
        lm = f"lm-{lm_size}" if lm_size else None
        if lm:
            whole["lm"] = sum(_row(lm, lm_dtype, quantization.lm).values())
        streamed = outside_blocks + STREAM_GROUPS_ON_GPU * row["transformer_block"]
        return cls({k: v / GIB for k, v in whole.items()}, streamed / GIB, dit, lm)


def working_gib(stage: str, limits: Limits, dtype: str, dit: str, lm: str | None) -> float:
    """The working memory ``stage`` needs beyond its weights at the tier's largest job (on the card
    ``limits`` were looked up for)."""
    gib = limits.gib
    half = dtype_key(dtype) == "bfloat16"
    element = 2 if half else 4
    if stage == "VAE encode":
        return encode_tile_seconds(gib) * ENCODE_GIB_PER_SECOND * (1 if half else 2)
    if stage == "VAE decode":
        return decode_tile_frames(gib) * DECODE_GIB_PER_FRAME * (1 if half else 2)
    if stage == "diffusion":
        shape = SHAPES[dit]
        tokens = limits.max_duration * LATENT_FRAMES_PER_SECOND / shape["patch_size"]
        rows = 2 * limits.max_batch * tokens  # classifier-free guidance doubles the batch
        per_row = (2 * shape["intermediate_size"] + 4 * shape["hidden_size"]) * element
        return DIT_WORKING_FACTOR * rows * per_row / GIB
    if stage == "lm" and lm:
        shape = SHAPES[lm]
        tokens = LM_PROMPT_TOKENS + CODES_PER_SECOND * limits.max_duration_lm
        per_token = 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * shape["head_dim"]
        return limits.max_batch_lm * tokens * per_token * element / GIB
    return ENCODER_WORKING_GIB


@dataclass(frozen=True)
class Fit:
    """The plan a model loads with on a card: its rating, the offload it needs and the computed
    peak of each stage (GiB)."""

    rating: str
    offload_to_cpu: bool
    offload_dit_to_cpu: bool
    stream_dit: bool
    budget_gib: float | None
    stages: dict[str, float]
    max_batch: int  # the largest batch it fits at (the tier's, or lower)

    @classmethod
    def unchanged(cls, limits: Limits) -> Fit:
        """Where there is nothing to fit (the CPU): the limits as they are."""
        return cls(YES, False, False, False, None, {}, limits.max_batch)

    @property
    def peak_gib(self) -> float:
        return max(self.stages.values(), default=0.0)

    def as_dict(self) -> dict:
        return {
            "rating": self.rating,
            "offload_to_cpu": self.offload_to_cpu,
            "offload_dit_to_cpu": self.offload_dit_to_cpu,
            "stream_dit": self.stream_dit,
            "max_batch": self.max_batch,
            "budget_gib": None if self.budget_gib is None else round(self.budget_gib, 2),
            "peak_gib": round(self.peak_gib, 2),
            "stages": {stage: round(value, 2) for stage, value in self.stages.items()},
        }


def stage_peaks(
    model: ModelBytes, limits: Limits, dtype: str, offload: bool, offload_dit: bool, stream: bool
) -> dict[str, float]:
    """GiB on the GPU during each stage: the resident components, the stage's own and its work."""
    idle_on_cpu = set(LIGHT if offload else ()) | set(HEAVY if offload_dit else ())
    if stream:
        idle_on_cpu.add("dit")
    resident = sum(size for name, size in model.whole.items() if name not in idle_on_cpu)
    peaks = {}
    for stage, component in STAGES.items():
        if component not in model.whole:
            continue
        running = 0.0
        if component in idle_on_cpu:
            running = model.dit_streamed if (stream and component == "dit") else model.whole[component]
        work = working_gib(stage, limits, dtype, model.dit_name, model.lm_name)
        peaks[stage] = resident + running + work
    return peaks


def _batches(limits: Limits) -> list[int]:
    """The batch limits to try, largest first: the tier's, then halved down to 1 (an operator's
    ACESTEP_MAX_BATCH_SIZE is kept as it is)."""
    if limits.origin.get("max_batch") == "ACESTEP_MAX_BATCH_SIZE":
        return [limits.max_batch]
    batches = [limits.max_batch]
    while batches[-1] > 1:
        batches.append(batches[-1] // 2)
    return batches


def fit_model(
    limits: Limits,
    is_xl: bool,
    dtype: str,
    quantization: QuantizationPlan,
    lm_name: str | None = None,
    lm_dtype: str | None = None,
) -> Fit:
    """The least offload under which every stage of the tier's largest job fits the card, starting
    from the tier's plan: the text encoder, VAE and LM offloaded; then the DiT too, at the tier's
    batch or a smaller one; then the DiT streamed. :class:`MemoryLimitError` when nothing fits, or
    when the offload needed is switched off by a setting."""
    if limits.gib is None:  # the CPU: nothing to fit
        return Fit.unchanged(limits)
    lm_size = lm_size_of(lm_name) if (lm_name and limits.lm_enabled) else None
    model = ModelBytes.of(is_xl, dtype, lm_dtype or dtype, quantization, lm_size)
    budget = limits.gib - CONTEXT_RESERVE_GIB
    full = [limits.max_batch]
    steps = [
        (YES, limits.offload_to_cpu, limits.offload_dit_to_cpu, False, full),
        (WITH_OFFLOAD, True, limits.offload_dit_to_cpu, False, full),
        (MARGINAL, True, True, False, _batches(limits)),
        (STREAMED, True, True, True, _batches(limits)),
    ]
    last: dict[str, float] = {}
    for rating, offload, offload_dit, stream, batches in steps:
        for batch in batches:
            sized = dataclasses.replace(limits, max_batch=batch, max_batch_lm=min(limits.max_batch_lm, batch))
            last = stage_peaks(model, sized, dtype, offload, offload_dit, stream)
            if max(last.values()) <= budget:
                _refuse_if_switched_off(limits, model, offload, offload_dit, budget, last)
                return Fit(rating, offload, offload_dit, stream, budget, last, batch)
    stage = max(last, key=last.get)
    raise MemoryLimitError(
        f"{_what(model, quantization)} does not fit {limits.tier_words()}: even with one component on the "
        f"GPU at a time, the DiT streamed and batch 1, the {stage} stage needs {last[stage]:.2f} GiB "
        f"of the {budget:.2f} GiB there is (computed for the tier's longest song, "
        f"{limits.max_duration:g} s). Lower ACESTEP_MAX_DURATION, quantize (ACESTEP_QUANTIZE=int8), "
        f"or use a larger GPU.",
        limit="fit",
        value=round(last[stage], 2),
        allowed=round(budget, 2),
    )


def _refuse_if_switched_off(
    limits: Limits, model: ModelBytes, offload: bool, offload_dit: bool, budget: float, peaks: dict
) -> None:
    for needed, key, setting in (
        (offload, "offload_to_cpu", "ACESTEP_OFFLOAD_TO_CPU"),
        (offload_dit, "offload_dit_to_cpu", "ACESTEP_OFFLOAD_DIT_TO_CPU"),
    ):
        if needed and not getattr(limits, key) and limits.origin.get(key) == setting:
            raise MemoryLimitError(
                f"{model.dit_name} fits {limits.tier_words()} only with {setting}=true (computed peak "
                f"{max(peaks.values()):.2f} GiB of {budget:.2f} GiB), which is switched off. Remove "
                f"{setting}=false, quantize, or load a smaller DiT.",
                limit="fit",
                value=0,
                allowed=1,
            )


def _what(model: ModelBytes, quantization: QuantizationPlan) -> str:
    lm = f" with {model.lm_name}" if model.lm_name else ""
    return f"{model.dit_name} ({quantization.dit} DiT){lm}"


def apply_fit(limits: Limits, fit: Fit) -> Limits:
    """``limits`` with the offload and streaming ``fit`` needs (never less offload than asked)."""
    changes: dict = {
        key: True
        for key in ("offload_to_cpu", "offload_dit_to_cpu", "stream_dit")
        if getattr(fit, key) and not getattr(limits, key)
    }
    if fit.max_batch < limits.max_batch:
        changes["max_batch"] = fit.max_batch
    if fit.max_batch < limits.max_batch_lm:
        changes["max_batch_lm"] = fit.max_batch
    if not changes:
        return limits
    origin = limits.origin | dict.fromkeys(changes, f"{limits.tier.name} fit ({fit.rating})")
    return dataclasses.replace(limits, **changes, origin=origin)


def fit_plan(
    limits: Limits,
    compute: str,
    is_xl: bool,
    precision: PrecisionPlan,
    quantization: QuantizationPlan,
    lm_name: str | None = None,
    plan: ResidencyPlan | None = None,
) -> tuple[Limits, ResidencyPlan, Fit]:
    """The limits, residency plan and fit one DiT loads with (``plan``, when given, is tightened
    where the fit needs more offload); :class:`MemoryLimitError` where it does not fit."""
    if compute == "cpu":
        fit = Fit.unchanged(limits)
        return limits, plan or plan_for(limits, compute), fit
    fit = fit_model(limits, is_xl, precision.name, quantization, lm_name, precision.lm)
    fitted = apply_fit(limits, fit)
    return fitted, tightened(plan, fitted, compute), fit
