"""What each training field does, in words, where ``TrainingRequest`` declares no description:
the help of ``acestep train``'s flags and the text of the REST training bodies (/openapi.json)."""

from __future__ import annotations

# One flag for the field both adapter types have under their own names: (LoRA's, LoKr's).
PER_ADAPTER = {
    "rank": ("lora_rank", "lokr_linear_dim"),
    "alpha": ("lora_alpha", "lokr_linear_alpha"),
}
# Help for the fields whose declaration has no description (the others use theirs).
HELP = {
    "dataset": "a dataset JSON file or a folder of audio with sidecars (see `acestep dataset`); a relative "
    "path that does not exist here is looked up in the training folder",
    "model": "the DiT folder name (default: ACESTEP_CONFIG_PATH, else the root's default DiT)",
    "adapter_type": "LoRA (peft) or LoKr (LyCORIS)",
    "output_name": "the adapter's name in the LoRA folder (default: <dataset>-<lora|lokr>)",
    "learning_rate": "the peak learning rate",
    "train_epochs": "passes over the dataset",
    "save_every_n_epochs": "a checkpoint every N epochs; 0: only at the end",
    "save_every_n_steps": "a checkpoint every N updates; 0: by epochs only",
    "training_shift": "turbo: the shift of its eight training timesteps",
    "crop_seconds": "seconds of each track per step, a random window; 0: whole tracks",
    "cfg_ratio": "base/SFT: the share of conditions replaced by the null embedding",
    "rank": "the adapter's rank (LoKr: its linear dimension)",
    "alpha": "the adapter's alpha (scale = alpha / rank)",
    "lora_dropout": "LoRA dropout",
    "lokr_decompose_both": "LoKr: decompose both Kronecker factors",
    "lokr_use_tucker": "LoKr: Tucker decomposition",
    "lokr_use_scalar": "LoKr: a trained scalar",
    "lokr_weight_decompose": "LoKr: DoRA weight decomposition",
    "train_batch_size": "tracks per micro-batch",
    "gradient_accumulation": "micro-batches per optimizer update",
    "training_seed": "seed of every random draw (same seed, same adapter on the CPU)",
    "optimizer": "adamw8bit needs bitsandbytes",
    "weight_decay": "the optimizer's weight decay",
    "warmup_steps": "updates of linear warmup (at most a tenth of the run), then cosine decay",
    "gradient_checkpointing": "recompute activations in the backward pass: far less memory, slower",
    "timestep_mu": "base/SFT: mean of the logit-normal timesteps",
    "timestep_sigma": "base/SFT: spread of the logit-normal timesteps",
    "resume": "continue the run named --output-name from its last checkpoint",
    "preprocess_only": "fill the preprocessing cache and stop",
}


def field_help(name: str) -> str | None:
    """A ``TrainingRequest`` field's help (the per-adapter ones under their shared name)."""
    shared = next((flag for flag, fields in PER_ADAPTER.items() if name in fields), name)
    return HELP.get(name) or HELP.get(shared)
