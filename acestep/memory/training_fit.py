"""Whether a training run fits a GPU, decided before the run is queued (torch-free).

The estimate is the DiT's frozen weights in the compute dtype, the adapter in float32 with its
gradient and AdamW's two moments (16 bytes a parameter), and the activations the backward pass
keeps: per layer and token, about ``ACTIVATION_FACTOR`` values of the hidden size (attention and
MLP inputs and outputs, norms); with gradient checkpointing only each layer's input stays, plus
one layer recomputed at a time. A fixed ``OVERHEAD_GIB`` covers the CUDA context, the allocator's
slack and the condition states. It errs high; the figures measured on GPUs are in BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_SECOND = 12.5  # 25 Hz latents, two frames a DiT token
# Values of the hidden size kept per token and layer without checkpointing: what the CPU run of
# bench/bench_training.py measured (BENCHMARKS.md, about 8.9 MiB per token in float32).
ACTIVATION_FACTOR = 48
OVERHEAD_GIB = 1.5
USABLE_FRACTION = 0.92  # of the GPU's memory a run may plan to use
GIB = 2**30


class TrainingFitError(ValueError):
    """A run that would not fit this GPU, with what to change."""


@dataclass(frozen=True)
class DitShape:
    """What the estimate needs from a DiT's config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: dict) -> DitShape:
        hidden = int(config.get("hidden_size", 2048))
        heads = int(config.get("num_attention_heads", 16))
        return cls(
            hidden=hidden,
            intermediate=int(config.get("intermediate_size", 4 * hidden)),
            layers=int(config.get("num_hidden_layers", 24)),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads", heads)),
            head_dim=int(config.get("head_dim", hidden // heads)),
        )

    def params(self) -> int:
        """The decoder's parameters (attention, cross-attention, MLP), the embeddings left out."""
        attention = (
            2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        )
        return self.layers * (2 * attention + 3 * self.hidden * self.intermediate)

    def adapter_params(self, rank: int) -> int:
        """A rank-``rank`` LoRA on q, k, v and o of both attentions in every layer."""
        q_o = 2 * rank * (self.hidden + self.heads * self.head_dim)
        k_v = 2 * rank * (self.hidden + self.kv_heads * self.head_dim)
        return self.layers * 2 * (q_o + k_v)


def estimate_gib(
    shape: DitShape, rank: int, crop_seconds: float, batch: int, checkpointing: bool, dtype_bytes: int
) -> float:
    seconds = crop_seconds if crop_seconds > 0 else 240.0  # whole tracks: upstream's 240 s cap
    tokens = batch * seconds * TOKENS_PER_SECOND
    activations = tokens * shape.hidden * dtype_bytes
    kept = (
        activations * (shape.layers + ACTIVATION_FACTOR)
        if checkpointing
        else (activations * ACTIVATION_FACTOR * shape.layers)
    )
    total = shape.params() * dtype_bytes + shape.adapter_params(rank) * 16 + kept
    return total / GIB + OVERHEAD_GIB


def check_fit(gpu_gib: float | None, estimate: float, checkpointing: bool) -> None:
    """Refuse a run whose estimate is over this GPU's usable memory (no GPU: RAM, not checked)."""
    if gpu_gib is None:
        return
    usable = gpu_gib * USABLE_FRACTION
    if estimate <= usable:
        return
    hints = ["a shorter crop_seconds", "a lower rank"]
    if not checkpointing:
        hints.insert(0, "gradient_checkpointing=true")
    raise TrainingFitError(
        f"this run needs about {estimate:.1f} GiB of GPU memory; this GPU allows {usable:.1f} GiB. "
        f"Try {', or '.join(hints)}"
    )


__all__ = ["DitShape", "TrainingFitError", "check_fit", "estimate_gib"]
