"""``TrainingRequest``: one training run, every value checked before any tensor exists.

Torch-free (the API process builds it). Field names and defaults follow upstream ACE-Step 1.5's
``/v1/training/start`` (LoRA) and ``/v1/training/start_lokr`` (LoKr) bodies; upstream's path fields
(``tensor_dir``, ``lora_output_dir``, ``output_dir``) are accepted as aliases. What acestep adds:
``dataset`` (a dataset file or folder, preprocessed on demand), ``output_name``, ``max_steps``,
``save_every_n_steps``, ``optimizer``, ``crop_seconds``, ``resume``.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from acestep.tasks import MAX_DURATION_S, MAX_NAME_CHARS, MAX_PATH_CHARS

ADAPTER_TYPES = ("lora", "lokr")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")
# Upstream's defaults differ per adapter: LoKr learns at a far higher rate over many more epochs.
DEFAULT_LEARNING_RATE = {"lora": 1e-4, "lokr": 0.03}
DEFAULT_EPOCHS = {"lora": 10, "lokr": 500}
MAX_RANK = 512
MAX_EPOCHS = 100_000
MAX_STEPS = 10_000_000
MAX_BATCH = 64
MAX_ACCUMULATION = 1024
MAX_WARMUP = 100_000
# An adapter name becomes a folder in the LoRA folder: a plain name, no path.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Upstream's training recipe (its v2 trainer): logit-normal timesteps and CFG dropout for base/SFT.
TIMESTEP_MU = -0.4
TIMESTEP_SIGMA = 1.0
CFG_RATIO = 0.15


class TrainingRequest(BaseModel):
    """One training run of a LoRA or LoKr adapter on one DiT."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dataset: str = Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        validation_alias="tensor_dir",
        description="a dataset JSON file, or a folder of audio with sidecars (under the training folder)",
    )
    model: str | None = Field(default=None, max_length=MAX_NAME_CHARS, description="the DiT folder name")
    adapter_type: Literal["lora", "lokr"] = "lora"
    output_name: str | None = Field(default=None, max_length=64, description="the adapter's name")
    # LoRA (peft)
    lora_rank: int = Field(default=64, ge=1, le=MAX_RANK)
    lora_alpha: float = Field(default=128.0, gt=0, le=4 * MAX_RANK)
    lora_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # LoKr (LyCORIS)
    lokr_linear_dim: int = Field(default=64, ge=1, le=MAX_RANK)
    lokr_linear_alpha: float = Field(default=128.0, gt=0, le=4 * MAX_RANK)
    lokr_factor: int = Field(default=-1, ge=-1, le=64, description="-1: chosen by LyCORIS")
    lokr_decompose_both: bool = False
    lokr_use_tucker: bool = False
    lokr_use_scalar: bool = False
    lokr_weight_decompose: bool = True
    # the run
    learning_rate: float | None = Field(default=None, gt=0, le=10.0, description="default per adapter type")
    train_epochs: int | None = Field(
        default=None, ge=1, le=MAX_EPOCHS, description="default per adapter type"
    )
    max_steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="stop after this many updates"
    )
    train_batch_size: int = Field(default=1, ge=1, le=MAX_BATCH)
    gradient_accumulation: int = Field(default=4, ge=1, le=MAX_ACCUMULATION)
    save_every_n_epochs: int = Field(default=5, ge=0, le=MAX_EPOCHS, description="0: only at the end")
    save_every_n_steps: int = Field(default=0, ge=0, le=MAX_STEPS, description="0: by epochs only")
    training_shift: float = Field(default=3.0, gt=0, le=100.0, description="turbo's discrete timesteps")
    training_seed: int = Field(default=42, ge=0, le=2**63 - 1)
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0)
    warmup_steps: int = Field(default=100, ge=0, le=MAX_WARMUP)
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1000.0, description="0: no clipping")
    gradient_checkpointing: bool = False
    crop_seconds: float = Field(default=60.0, ge=0.0, le=MAX_DURATION_S, description="0: whole tracks")
    timestep_mu: float = Field(default=TIMESTEP_MU, ge=-10.0, le=10.0)
    timestep_sigma: float = Field(default=TIMESTEP_SIGMA, gt=0.0, le=10.0)
    cfg_ratio: float = Field(default=CFG_RATIO, ge=0.0, le=1.0, description="base/SFT only")
    resume: bool = False
    preprocess_only: bool = False  # fill the preprocessing cache and stop (upstream's /v1/dataset/preprocess)

    @model_validator(mode="before")
    @classmethod
    def _upstream_paths(cls, data: object) -> object:
        """Upstream names the output folder ``lora_output_dir`` (LoRA) or ``output_dir`` (LoKr);
        acestep writes into its LoRA folder, so the folder's last part is the adapter's name."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("lora_output_dir", "output_dir"):
            folder = data.pop(key, None)
            if isinstance(folder, str) and folder.strip() and not data.get("output_name"):
                data["output_name"] = folder.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainingRequest:
        if self.output_name is not None and not NAME_RE.fullmatch(self.output_name):
            raise ValueError(
                f"output_name must be a plain name (letters, digits, '.', '_', '-'; at most 64), "
                f"got {self.output_name!r}"
            )
        for name in ("learning_rate", "crop_seconds", "lora_alpha", "lokr_linear_alpha"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
        if 0 < self.crop_seconds < 1.0:
            raise ValueError(f"crop_seconds must be 0 (whole tracks) or at least 1, got {self.crop_seconds}")
        return self

    # -- what the run uses ---------------------------------------------------------------------

    @property
    def lr(self) -> float:
        return (
            self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATE[self.adapter_type]
        )

    @property
    def epochs(self) -> int:
        return self.train_epochs if self.train_epochs is not None else DEFAULT_EPOCHS[self.adapter_type]

    @property
    def rank(self) -> int:
        return self.lora_rank if self.adapter_type == "lora" else self.lokr_linear_dim

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.adapter_type == "lora" else self.lokr_linear_alpha

    def adapter_settings(self) -> dict:
        """The fields that shape the adapter (recorded with it, and part of a run's identity)."""
        prefix = "lora_" if self.adapter_type == "lora" else "lokr_"
        fields = {k: v for k, v in self.model_dump().items() if k.startswith(prefix)}
        return {"adapter_type": self.adapter_type} | fields

    def run_identity(self) -> dict:
        """What a resumed run must share with the run it resumes (everything but its length and
        how often it saves)."""
        loose = {
            "train_epochs",
            "max_steps",
            "save_every_n_epochs",
            "save_every_n_steps",
            "resume",
            "output_name",
        }
        return {k: v for k, v in self.model_dump().items() if k not in loose}


def training_request(body: dict) -> TrainingRequest:
    """Build from a face's JSON body (``ValueError`` with pydantic's message on bad input)."""
    return TrainingRequest.model_validate(body)


__all__ = [
    "ADAPTER_TYPES",
    "CFG_RATIO",
    "OPTIMIZERS",
    "TIMESTEP_MU",
    "TIMESTEP_SIGMA",
    "TrainingRequest",
    "training_request",
]
