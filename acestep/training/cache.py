"""Preprocessing: what training reads, computed once and kept as safetensors.

Three passes, each with one component on the compute device (the others wait in CPU RAM):

``vae``        the audio -> its latents (the training target)
``text``       caption and lyric prompts -> the text encoder's states
``condition``  text states + the silent timbre reference -> the DiT's condition states

Each file is named by a hash of everything its content depends on (the component's identity, the
compute dtype, the inputs and the settings), so an unchanged input is skipped, a changed setting
recomputes, and an interrupted run resumes where it stopped. Files are written under a temporary
name and renamed. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from acestep.checkpoints import CheckpointPaths, Components
from acestep.checkpoints.layout import find_weights
from acestep.engine.audio_io import SAMPLE_RATE, load_audio
from acestep.engine.codec import AudioCodec, tile_frames
from acestep.engine.conditioning import REFERENCE_FRAMES
from acestep.engine.prompts import caption_prompt, encode_text, lyric_prompt, metas_string
from acestep.tasks import DEFAULT_INSTRUCTION, LATENT_FRAMES_PER_SECOND, MAX_DURATION_S
from acestep.training.dataset import Dataset, Sample
from acestep.training.places import CACHE_FOLDER

PASSES = ("vae", "text", "condition")
MAX_TRACK_SECONDS = 240.0  # upstream's preprocessing reads at most this much of each track
INSTRUMENTAL = "[Instrumental]"
Progress = Callable[[str, float], None]


class Stopped(RuntimeError):
    """Asked to stop between two items; what was finished stays in the cache."""


@dataclass(frozen=True)
class CachedSample:
    name: str
    latents: Path  # target_latents [T, C]
    condition: Path  # encoder_hidden_states [L, D]


@dataclass
class Prepared:
    samples: list[CachedSample]
    shared: Path  # silence_latent [1, T, C], null_condition_emb [1, 1, D]
    computed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PASSES, 0))
    reused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PASSES, 0))


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _file_identity(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def component_identity(folder: Path) -> str:
    """A component folder's identity: its name, config files and weight files (size and mtime),
    without reading the weights."""
    parts: list = [folder.name]
    for config in sorted(folder.glob("*.json")):
        parts.append([config.name, config.read_text(errors="replace")])
    try:
        parts.append(_file_identity(find_weights(folder)))
    except Exception:  # a diffusers subfolder or a sharded DiT: every weights file counts
        parts.extend(_file_identity(p) for p in sorted(folder.glob("*.safetensors")))
    return _digest(*parts)


def cache_root(training_dir: Path, paths: CheckpointPaths) -> Path:
    return training_dir / CACHE_FOLDER / paths.dit_name


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, str(partial))
    os.replace(partial, path)


class Preprocessor:
    """Runs the three passes over a dataset for one checkpoint on ``device``."""

    def __init__(
        self,
        components: Components,
        paths: CheckpointPaths,
        root: Path,
        device: torch.device,
        dtype: torch.dtype,
        on_progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.components, self.paths, self.root = components, paths, root
        self.device, self.dtype = device, dtype
        self.on_progress = on_progress or (lambda stage, fraction: None)
        self.should_stop = should_stop or (lambda: False)
        self.ids = {
            "vae": component_identity(paths.vae_dir),
            "text": component_identity(paths.text_encoder_dir),
            "condition": component_identity(paths.dit_dir),
        }
        self.codec = AudioCodec(components.vae, compute=device)  # once: it sets the VAE's tiling
        self._computed = dict.fromkeys(PASSES, 0)
        self._reused = dict.fromkeys(PASSES, 0)

    def run(self, dataset: Dataset) -> Prepared:
        samples = dataset.samples
        vae_keys = [self._vae_key(s) for s in samples]
        frames = self._pass("vae", samples, vae_keys, self._encode_audio)
        prompts = [self._prompts(dataset, s, n) for s, n in zip(samples, frames, strict=True)]
        text_keys = [_digest("text", self.ids["text"], str(self.dtype), p) for p in prompts]
        self._pass("text", prompts, text_keys, self._encode_text)
        cond_keys = [_digest("condition", self.ids["condition"], str(self.dtype), k) for k in text_keys]
        text_files = [self._file("text", k) for k in text_keys]
        self._pass("condition", text_files, cond_keys, self._encode_condition)
        shared = self._shared()
        prepared = Prepared(
            samples=[
                CachedSample(s.name, self._file("vae", v), self._file("condition", c))
                for s, v, c in zip(samples, vae_keys, cond_keys, strict=True)
            ],
            shared=shared,
        )
        prepared.computed, prepared.reused = self._computed, self._reused
        return prepared

    # -- the passes ------------------------------------------------------------------------------

    def _file(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.safetensors"

    def _pass(self, stage: str, items: list, keys: list[str], compute: Callable) -> list:
        """Compute what is missing; return each item's result summary (the VAE pass: frames)."""
        todo = [i for i, key in enumerate(keys) if not self._file(stage, key).is_file()]
        self._reused[stage] += len(keys) - len(todo)
        module = {"vae": "vae", "text": "text_encoder", "condition": "condition_encoder"}[stage]
        if todo:
            self._place(module, self.device)
        try:
            for done, index in enumerate(todo):
                if self.should_stop():
                    raise Stopped(f"stopped during the {stage} pass")
                _save(self._file(stage, keys[index]), compute(items[index]))
                self._computed[stage] += 1
                self.on_progress(f"preprocess_{stage}", (done + 1) / len(todo))
        finally:
            if todo:
                self._place(module, torch.device("cpu"))
        if stage != "vae":
            return []
        return [load_file(str(self._file(stage, k)))["target_latents"].shape[0] for k in keys]

    def _place(self, module: str, device: torch.device) -> None:
        if self.device.type == "cpu":
            return
        getattr(self.components, module).to(device)
        if device.type == "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _vae_key(self, sample: Sample) -> str:
        audio = Path(sample.audio_path)
        return _digest("vae", self.ids["vae"], str(self.dtype), MAX_TRACK_SECONDS, _file_identity(audio))

    def _encode_audio(self, sample: Sample) -> dict[str, torch.Tensor]:
        wav = load_audio(sample.audio_path, max_seconds=MAX_DURATION_S)
        wav = wav[:, : int(MAX_TRACK_SECONDS * SAMPLE_RATE)]
        return {"target_latents": self.codec.encode(wav, self.dtype)[0]}

    def _prompts(self, dataset: Dataset, sample: Sample, frames: int) -> tuple[str, str]:
        seconds = frames / LATENT_FRAMES_PER_SECOND
        metas = metas_string(sample.bpm, sample.timesignature, sample.keyscale, seconds)
        lyrics = INSTRUMENTAL if sample.is_instrumental or not sample.lyrics.strip() else sample.lyrics
        return (
            caption_prompt(DEFAULT_INSTRUCTION, dataset.caption_for(sample), metas),
            lyric_prompt(sample.language, lyrics),
        )

    def _encode_text(self, prompts: tuple[str, str]) -> dict[str, torch.Tensor]:
        comps = self.components
        text = encode_text(comps.text_encoder, comps.tokenizer, *prompts)
        return {"text_hidden": text.text_hidden[0], "lyric_hidden": text.lyric_hidden[0]}

    @torch.inference_mode()
    def _encode_condition(self, text_file: Path) -> dict[str, torch.Tensor]:
        encoder = self.components.condition_encoder
        dtype = next(encoder.parameters()).dtype
        text = {k: v.to(self.device, dtype).unsqueeze(0) for k, v in load_file(str(text_file)).items()}
        silence = encoder.silence_latent.to(self.device, dtype)
        states, _ = encoder(
            text_hidden_states=text["text_hidden"],
            text_attention_mask=torch.ones(
                text["text_hidden"].shape[:2], dtype=torch.bool, device=self.device
            ),
            lyric_hidden_states=text["lyric_hidden"],
            lyric_attention_mask=torch.ones(
                text["lyric_hidden"].shape[:2], dtype=torch.bool, device=self.device
            ),
            refer_audio_acoustic_hidden_states_packed=tile_frames(silence, REFERENCE_FRAMES),
            refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=self.device),
        )
        return {"encoder_hidden_states": states[0]}

    def _shared(self) -> Path:
        """The silence latent (the text2music context) and the null embedding (CFG dropout)."""
        path = self.root / f"shared-{_digest('shared', self.ids['condition'])}.safetensors"
        if not path.is_file():
            encoder = self.components.condition_encoder
            _save(
                path,
                {"silence_latent": encoder.silence_latent, "null_condition_emb": encoder.null_condition_emb},
            )
        return path


__all__ = [
    "PASSES",
    "CachedSample",
    "Prepared",
    "Preprocessor",
    "Stopped",
    "cache_root",
    "component_identity",
]
