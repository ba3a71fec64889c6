"""The adapter being trained on the DiT: LoRA through peft, LoKr through LyCORIS.

Both adapt the attention projections of every DiT layer, self- and cross-attention (diffusers'
``to_q``/``to_k``/``to_v``/``to_out.0``, upstream's ``q_proj``/``k_proj``/``v_proj``/``o_proj``),
as upstream's trainer does. The adapter's weights are kept in float32 whatever the DiT's dtype
(the base stays frozen in it). Initial values are drawn from the global RNG after seeding it, so
a run's seed decides them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from acestep.lora.formats import write_lokr, write_lora
from acestep.lora.lokr import quiet_lycoris
from acestep.training.request import TrainingRequest

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "trained"  # not "training": nn.Module has that attribute
# LyCORIS matches module paths with re.match (anchored at the start).
LYCORIS_PRESET_FIELDS = ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "USE_FNMATCH")
LOKR_TARGET = r"layers\.\d+\.(self_attn|cross_attn)\.(to_q|to_k|to_v|to_out\.0)$"


class TrainingError(ValueError):
    """A run that cannot start or go on, with the reason (a 4xx before the job starts)."""


class TrainableAdapter:
    """One adapter attached to ``transformer`` for training."""

    def __init__(self, transformer: torch.nn.Module, request: TrainingRequest, seed: int):
        self.transformer = transformer
        self.request = request
        self.kind = request.adapter_type
        transformer.requires_grad_(False)
        torch.manual_seed(seed)  # the adapter's initial values
        self.network = None
        if self.kind == "lora":
            self._attach_lora()
        else:
            self._attach_lokr()
        for param in self.parameters():
            param.data = param.data.float()
            param.requires_grad_(True)

    def _attach_lora(self) -> None:
        from peft import LoraConfig

        config = LoraConfig(
            r=self.request.lora_rank,
            lora_alpha=self.request.lora_alpha,
            lora_dropout=self.request.lora_dropout,
            target_modules=list(TARGETS),
            init_lora_weights=True,
        )
        self.transformer.add_adapter(config, adapter_name=ADAPTER_NAME)

    def _attach_lokr(self) -> None:
        try:
            from lycoris import LycorisNetwork, create_lycoris
        except ImportError:
            raise TrainingError("LoKr training needs LyCORIS: pip install 'acestep[train]'") from None
        req = self.request
        # LyCORIS keeps its preset on the class: set ours for this network, then put theirs back.
        saved = {name: getattr(LycorisNetwork, name) for name in LYCORIS_PRESET_FIELDS}
        LycorisNetwork.apply_preset(
            {"enable_conv": False, "target_module": [], "target_name": [LOKR_TARGET], "use_fnmatch": False}
        )
        try:
            with quiet_lycoris():  # it logs every module it builds
                self.network = create_lycoris(
                    self.transformer,
                    1.0,
                    linear_dim=req.lokr_linear_dim,
                    linear_alpha=req.lokr_linear_alpha,
                    algo="lokr",
                    factor=req.lokr_factor,
                    decompose_both=req.lokr_decompose_both,
                    use_tucker=req.lokr_use_tucker,
                    use_scalar=req.lokr_use_scalar,
                    dora_wd=req.lokr_weight_decompose,
                )
        finally:
            for name, value in saved.items():
                setattr(LycorisNetwork, name, value)
        self.network.apply_to()
        self.network.to(next(self.transformer.parameters()).device)
        if not list(self.network.parameters()):
            raise TrainingError("LoKr found no attention projection to adapt in this DiT")

    # -- weights ---------------------------------------------------------------------------------

    def parameters(self) -> list[torch.nn.Parameter]:
        if self.network is not None:
            return list(self.network.parameters())
        return [
            p for n, p in self.transformer.named_parameters() if f".{ADAPTER_NAME}." in n and "lora_" in n
        ]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by stable names (LoRA: diffusers' keys relative to the DiT)."""
        if self.network is not None:
            return {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.transformer, adapter_name=ADAPTER_NAME)
        return {k: v.detach().clone() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.network is not None:
            self.network.load_state_dict(state)
            return
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.transformer, state, adapter_name=ADAPTER_NAME)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise TrainingError(
                f"the checkpoint does not fit this adapter (unexpected keys {unexpected[:3]})"
            )

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def export(self, out: Path, base_variant: str) -> dict[str, Path]:
        """Write the adapter where the LoRA catalog reads it; returns the written paths."""
        state = {k: v.float().cpu() for k, v in self.state_dict().items()}
        if self.network is None:
            targets = sorted({_target_of(k) for k in state})
            return write_lora(
                out, state, self.request.lora_rank, self.request.lora_alpha, base_variant, targets
            )
        config = self.request.adapter_settings()
        return {"lokr": write_lokr(out, state, config, base_variant)}


def _target_of(key: str) -> str:
    match = re.search(r"\.(to_q|to_k|to_v|to_out\.0)\.lora_", key)
    return match.group(1) if match else key


__all__ = ["ADAPTER_NAME", "TARGETS", "TrainableAdapter", "TrainingError"]
