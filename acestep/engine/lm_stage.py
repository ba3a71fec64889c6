"""The engine's 5 Hz LM: found at start-up, loaded on the first request that asks, placed by the plan."""

from __future__ import annotations

from pathlib import Path

import torch

from acestep.checkpoints.lm_folders import LmNotAvailable
from acestep.memory.residency import Residency
from acestep.request import GenerationRequest
from acestep.tasks import MAX_DURATION_S, MIN_DURATION_S


class LmStage:
    """The engine's LM: found at start-up, loaded on first need, placed by the memory plan."""

    def __init__(
        self,
        folder: Path | None,
        device: torch.device,
        max_duration: float = MAX_DURATION_S,
        dtype: torch.dtype = torch.float32,
        quantize: str = "none",
    ):
        self.folder = folder
        self.quantize = quantize  # the quantization plan's ``lm`` entry (acestep/memory/quantization.py)
        self.device = device
        self.dtype = dtype  # the precision plan's ``lm`` entry (acestep/memory/precision.py)
        self.max_duration = int(max_duration)  # the tier's with-LM maximum: the LM cannot ask for more
        self.model = None  # acestep.lm.model.LanguageModel once loaded

    @property
    def name(self) -> str | None:
        return self.folder.name if self.folder is not None else None

    def require(self, request: GenerationRequest) -> None:
        """Before any tensor: refuse a request that needs an LM this engine has not got."""
        if request.uses_lm and self.folder is None:
            raise LmNotAvailable(
                "this request needs the 5Hz LM (thinking, use_cot_*, sample_mode or use_format), and no "
                "acestep-5Hz-lm-* folder was found; download one with: acestep-download --model "
                "acestep-5Hz-lm-1.7B, or point ACESTEP_LM_MODEL_PATH at one"
            )

    def load(self, residency: Residency):
        if self.model is None:
            from acestep.lm.model import LanguageModel, compile_requested

            self.model = LanguageModel.load(self.folder, dtype=self.dtype)
            if self.quantize != "none":  # on the CPU, before the plan places it
                from acestep.engine.quant_cache import cache_folder
                from acestep.engine.quantize import LM_KEPT, quantize_module

                quantize_module(self.model.model, self.quantize, LM_KEPT, cache_folder(), self.folder, "lm")
            self.model.max_duration = max(MIN_DURATION_S, min(int(MAX_DURATION_S), self.max_duration))
            residency.attach("lm", self.model.model)
            if compile_requested() and residency.plan.idle["lm"].value == "gpu":
                self.model.try_fast_path()
        return self.model

    def think(self, request: GenerationRequest, seeds: list[int], residency: Residency):
        """Run the LM for ``request`` and return (the request it completes, its ``SongPlan``)."""
        from acestep.lm.planner import plan_song

        lm = self.load(residency)
        with residency.use("lm"):
            song = plan_song(lm, request, seeds)
        return request.model_copy(update=song.updates), song

    @staticmethod
    def inputs_of(request: GenerationRequest) -> dict:
        """The inputs as completed by the LM (what ``/format_input`` answers)."""
        return {
            "caption": request.caption,
            "lyrics": request.lyrics,
            "bpm": request.bpm,
            "key_scale": request.key_scale,
            "time_signature": request.time_signature,
            "duration": request.audio_duration if request.audio_duration > 0 else None,
            "vocal_language": request.vocal_language,
        }

    def metas_of(self, song) -> dict:
        """What the LM did, for the result's metas."""
        return {
            "lm_model": self.name,
            "lm_metas": song.lm_metas,
            "cot": song.cot,
            "audio_codes": song.codes,
            "lm_tokens": song.tokens,
            "lm_timings": song.timings,
            "lm_fast_path": self.model.fast_path if self.model is not None else "off",
        }
