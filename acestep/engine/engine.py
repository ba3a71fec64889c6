"""``AceStep``: load a checkpoint once, then turn ``GenerationRequest``s into audio files.

The flow of one request: check it against the model (before any tensor exists), resolve seeds,
load the audio inputs, plan the task's conditioning, encode text, sample, decode, write files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from loguru import logger

from acestep.checkpoints import CheckpointPaths, Components, load_components, resolve
from acestep.checkpoints.lm_folders import LmNotAvailable, find_lm_folder
from acestep.checkpoints.task_support import require_task
from acestep.engine import audio_io, conditioning
from acestep.engine.audio_limits import shortest_source
from acestep.engine.codec import AudioCodec
from acestep.engine.fast_dit import DitRunner, compiled_decoder, fast_mode
from acestep.engine.lm_stage import LmStage
from acestep.engine.output import GenerationError as GenerationError  # re-exported: a public name
from acestep.engine.output import check_latents, fit_length, save_items
from acestep.engine.prompts import caption_prompt, encode_text, lyric_prompt, metas_string
from acestep.engine.sampler import Condition, Guidance, denoise
from acestep.engine.schedules import build_schedule
from acestep.engine.seeds import generators, item_noise, resolve_seeds
from acestep.lora.adapters import Adapters
from acestep.memory.devices import apply_vram_cap, resolve_device, total_gib
from acestep.memory.limits import Limits
from acestep.memory.mixed import use_rope_mode
from acestep.memory.precision import PrecisionPlan, apply_attention, precision_plan
from acestep.memory.residency import Place, Residency, ResidencyPlan, plan_for, resident_plan
from acestep.request import GenerationRequest
from acestep.result import GenerationResult
from acestep.tasks import MAX_DURATION_S, UNBUILT_TASKS, source_used

ProgressCallback = Callable[[str, float], None]


class AceStep:
    """One loaded ACE-Step 1.5 model (DiT, condition encoder, text encoder, VAE)."""

    def __init__(
        self,
        components: Components,
        paths: CheckpointPaths,
        device: torch.device,
        dtype: torch.dtype,
        plan: ResidencyPlan | None = None,
        limits: Limits | None = None,
        lm_folder: Path | None = None,
        fast: str = "off",
        precision: PrecisionPlan | None = None,
    ):
        """``components`` are already stored as ``precision`` says (default: all in ``dtype``);
        ``fast`` is the DiT path (``off`` | ``compile`` | ``graphs``, see ``engine/fast_dit.py``)."""
        self.components = components
        self.paths = paths
        self.device = device
        self.dtype = dtype
        self.precision = precision or PrecisionPlan.uniform(dtype)
        use_rope_mode(self.precision.rope)  # process-wide: the engine built last decides
        self.limits = limits
        self.residency = Residency(components.modules(), plan or resident_plan(str(device)))
        self.residency.settle()
        self.dit = DitRunner(components.transformer, fast)
        self.adapters = Adapters(components.transformer, paths.variant.tag)
        self._adapters_seen = self.adapters.version
        # Captured graphs point at the DiT's weights: only worth it while they stay put.
        self.dit.graphs_allowed = self.residency.plan.idle["dit"] is not Place.CPU
        self.codec = AudioCodec(components.vae, compute=device)
        if fast != "off":
            self.codec.compiled = compiled_decoder(components.vae)
        lm_seconds = limits.max_duration_lm if limits is not None else MAX_DURATION_S
        self.lm = LmStage(lm_folder, device, lm_seconds, self.precision.lm_torch_dtype)
        # Small tensors every stage needs, kept on the compute device so that their owner (the
        # condition encoder) may wait on the CPU between uses.
        encoder = components.condition_encoder
        self._silence = encoder.silence_latent.detach().to(device)
        self._null_embedding = encoder.null_condition_emb.detach().to(device)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dit: str | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        limits: Limits | None = None,
        plan: ResidencyPlan | None = None,
        lm: str | Path | None = None,
        fast: str | None = None,
    ) -> AceStep:
        """Load an upstream ``checkpoints/`` root, one DiT folder, or a diffusers folder.

        ``limits`` default to this device's tier (with the ``ACESTEP_*`` overrides) and ``plan``
        to the offload those limits imply; ``MAX_CUDA_VRAM`` caps this process's allocator.
        ``lm`` names the 5 Hz LM folder (default: ``ACESTEP_LM_MODEL_PATH``, else the first
        ``acestep-5Hz-lm-*`` in the checkpoints root); it loads when a request first needs it.
        ``dtype`` is a dtype or a policy name (``fp16-mixed``; default ``ACESTEP_DTYPE``, then the
        per-GPU policy) and ``fast`` the DiT path (default ``ACESTEP_DIT_FAST``, else ``off``).
        """
        paths = resolve(path, dit)
        try:
            lm_folder = find_lm_folder(paths.root, lm)
        except LmNotAvailable as exc:
            if lm not in (None, ""):
                raise
            logger.warning(f"{exc}; requests that need the LM will be refused")
            lm_folder = None
        target = resolve_device(device)
        precision = precision_plan(target, dtype)
        fast = fast_mode() if fast is None else fast
        limits = limits or Limits.for_gpu(total_gib(target))
        if limits.simulated:
            apply_vram_cap(target, limits.gib)
        plan = plan or plan_for(limits, str(target))
        started = time.perf_counter()
        # Weights land on the CPU first; the plan then moves to the GPU what stays there.
        components = load_components(paths, torch.device("cpu"), precision)
        attention = apply_attention(components)
        engine = cls(
            components, paths, target, precision.torch_dtype, plan, limits, lm_folder, fast, precision
        )
        logger.info(
            f"loaded {paths.dit_name} ({paths.layout} layout, {paths.variant.name}) for {target} as "
            f"{precision.name} ({attention} attention, fast DiT {fast}) in "
            f"{time.perf_counter() - started:.1f} s; "
            f"tier {limits.tier.name}, residency {engine.residency.as_dict()}"
        )
        return engine

    def park(self) -> None:
        """Every weight to CPU RAM, the small per-engine tensors included."""
        self.dit.reset()
        self.residency.park()
        self._silence = self._silence.cpu()
        self._null_embedding = self._null_embedding.cpu()

    def wake(self) -> None:
        """Back to the plan's placement after :meth:`park` (or after a failed job)."""
        self.residency.settle()
        self._silence = self._silence.to(self.device)
        self._null_embedding = self._null_embedding.to(self.device)

    def placement(self) -> dict[str, str]:
        """Where each component is; ``lora``: with the DiT while adapters are loaded."""
        where = self.residency.as_dict()
        where["lora"] = where["dit"] if self.adapters.loaded else Place.UNLOADED.value
        return where

    @property
    def variant(self):
        return self.paths.variant

    @property
    def silence_latent(self) -> torch.Tensor:
        return self._silence

    def check(self, request: GenerationRequest) -> None:
        """Model-dependent checks, before any tensor is allocated."""
        task = request.effective_task
        if task in UNBUILT_TASKS:
            raise ValueError(UNBUILT_TASKS[task])
        require_task(self.paths, task)
        self.adapters.check(request.adapters)
        self.lm.require(request)
        if request.uses_lm and self.limits is not None:
            self.limits.check_lm(self.lm.name)
        uses_fsq = (
            task == "cover"
            or bool(request.audio_code_string.strip())
            or (request.thinking and request.task_type == "text2music")
        )
        if uses_fsq and self.components.audio_tokenizer is None:
            raise ValueError(
                f"{self.paths.dit_name} has no audio tokenizer/detokenizer, "
                "so cover and audio codes are unavailable"
            )

    def generate(
        self,
        request: GenerationRequest,
        output_dir: str | Path,
        progress: ProgressCallback | None = None,
        lm_only: bool = False,
    ) -> GenerationResult:
        """Generate audio files into ``output_dir``; ``lm_only`` stops after the LM and returns its
        completed inputs (caption, lyrics, metadata) with no audio (``/format_input``)."""
        self.check_inputs(request, lm_only)
        run = _Run(progress)
        seeds = resolve_seeds(request.seed, request.batch_size, request.wants_random_seed)
        request, song = self._think(request, seeds, run)
        if lm_only:
            return self._lm_result(request, song, run.timings)
        self._attach_adapters(request, run)
        source, reference = self._load_audio(request, run)
        plan, refer = self._encode_audio(request, source, reference, song, run)
        schedule, warnings = self._schedule(request, plan, song)
        condition, switch, guidance = self._encode_text(request, plan, refer, len(schedule), run)
        latents = self._denoise(seeds, plan, schedule, condition, guidance, switch, run)
        audio = self._decode(latents, plan, run)
        run.report("save", 0.0)
        items = save_items(request, audio, seeds, plan, output_dir, self.paths.dit_name)
        run.lap("save")
        return self._result(request, items, plan, schedule, song, warnings, run)

    def check_inputs(self, request: GenerationRequest, lm_only: bool = False) -> None:
        """Everything that can refuse a request, before any tensor is allocated."""
        if lm_only and not request.uses_lm:
            raise ValueError("an LM-only job needs thinking, sample_mode or use_format")
        self.check(request)
        if self.limits is not None:
            self.limits.check(request, uses_lm=request.uses_lm)

    def _attach_adapters(self, request: GenerationRequest, run: _Run) -> None:
        """The request's LoRA adapters into the DiT; captured graphs of another set are dropped."""
        if self.adapters.apply(request.adapters):
            run.lap("lora")
        if self.adapters.version != self._adapters_seen:
            self.dit.reset()  # captured graphs ran another adapter set (or freed adapter weights)
            self._adapters_seen = self.adapters.version

    def _load_audio(
        self, request: GenerationRequest, run: _Run
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The source and reference audio the task uses (48 kHz stereo). A silent reference is
        refused (it has no timbre to give); a silent source is silence context, as upstream: lego
        on it writes a first track (docs/tasks.md)."""
        uses_source = request.src_audio and source_used(
            request.task_type, bool(request.audio_code_string.strip())
        )
        shortest = shortest_source(request.task_type, request.repainting_end)
        source = audio_io.load_audio(request.src_audio, min_seconds=shortest) if uses_source else None
        reference = audio_io.load_audio(request.reference_audio) if request.reference_audio else None
        if reference is not None and audio_io.is_silent(reference):
            raise audio_io.AudioInputError("reference audio is silent")
        run.lap("load_audio")
        return source, reference

    def _encode_audio(self, request, source, reference, song, run: _Run):
        """The task's conditioning plan (VAE-encoded source or LM codes) and the timbre latents."""
        run.report("conditioning", 0.0)
        needs_codec = (
            source is not None or bool(request.audio_code_string.strip()) or bool(song and song.codes)
        )
        use = self.residency.use
        with use(*(("vae", "condition_encoder") if needs_codec else ())):
            plan = conditioning.plan_task(
                request,
                self.components,
                self.codec,
                source,
                song.codes if song else None,
                self.silence_latent,
                self.dtype,
            )
        with use(*(("vae",) if reference is not None else ())):
            refer = conditioning.reference_latents(self.codec, reference, self.silence_latent, self.dtype)
        run.lap("audio_encode")
        return plan, refer

    def _schedule(self, request: GenerationRequest, plan: conditioning.TaskPlan, song):
        """The timesteps, and every note the plan, the schedule and the LM left for the result."""
        schedule, notes = build_schedule(
            self.variant, request.inference_steps, request.shift, request.timesteps
        )
        warnings = plan.notes + notes + (song.notes if song else [])
        for note in warnings:
            logger.info(note)
        return schedule, warnings

    def _encode_text(self, request, plan: conditioning.TaskPlan, refer, steps: int, run: _Run):
        """The condition (and a cover's late switch to the non-cover condition) and guidance."""
        metas = metas_string(request.bpm, request.time_signature, request.key_scale, plan.metas_duration_s)
        condition = self._condition(request, plan, metas, refer)
        switch = None
        if plan.is_cover and request.audio_cover_strength < 1.0:
            alt_plan = conditioning.non_cover_plan(plan, self.silence_latent)
            late = int(steps * request.audio_cover_strength)
            switch = (late, self._condition(request, alt_plan, metas, refer))
        guidance = None
        if self.variant.uses_guidance and request.guidance_scale > 1.0:
            guidance = Guidance(
                scale=request.guidance_scale,
                interval=(request.cfg_interval_start, request.cfg_interval_end),
                null_embedding=self._null_embedding,
            )
        run.lap("text_encode")
        return condition, switch, guidance

    def _denoise(self, seeds, plan, schedule, condition, guidance, switch, run: _Run) -> torch.Tensor:
        """Seeded noise through the DiT's sampling loop."""
        noise = item_noise(
            generators(seeds, self.device), (plan.frames, self.codec.latent_dim), self.device, self.dtype
        )
        with self.residency.use("dit"):
            latents = denoise(
                self.dit,
                noise,
                schedule,
                condition,
                guidance,
                switch,
                on_step=lambda done, total: run.report("diffusion", done / total),
            )
        check_latents(latents, self.precision.name)
        run.lap("dit")
        return latents

    def _decode(self, latents: torch.Tensor, plan: conditioning.TaskPlan, run: _Run) -> torch.Tensor:
        """Latents to audio at the planned length, kept below clipping."""
        run.report("decode", 0.0)
        with self.residency.use("vae"):
            audio = self.codec.decode(latents)
        audio = audio_io.anti_clip(fit_length(audio, plan))
        run.lap("vae_decode")
        return audio

    def _result(self, request, items, plan, schedule, song, warnings, run: _Run) -> GenerationResult:
        run.finish()
        return GenerationResult(
            items=items,
            sample_rate=audio_io.SAMPLE_RATE,
            task_type=plan.task,
            model=self.paths.dit_name,
            variant=self.variant.name,
            metas={
                "bpm": request.bpm,
                "key_scale": request.key_scale,
                "time_signature": request.time_signature,
                "duration": plan.target_samples / audio_io.SAMPLE_RATE,
                "caption": request.caption,
                "vocal_language": request.vocal_language,
                "instruction": plan.instruction,
                "steps": len(schedule),
                "timesteps": schedule,
                "lora": [{"name": name, "scale": scale} for name, scale in request.adapters],
                **(self.lm.metas_of(song) if song else {}),
            },
            timings=run.timings,
            warnings=warnings,
        )

    def _think(self, request: GenerationRequest, seeds: list[int], run: _Run):
        """Run the LM when the request asks for it (loading it on first use) and return the
        request it completes; without the LM, the request as it came."""
        if not request.uses_lm:
            return request, None
        run.report("lm", 0.0)
        request, song = self.lm.think(request, seeds, self.residency)
        if self.limits is not None:
            self.limits.check(request, uses_lm=True)  # the LM may have chosen the duration
        run.lap("lm")
        return request, song

    def _lm_result(self, request: GenerationRequest, song, timings: dict[str, float]) -> GenerationResult:
        """An LM-only job's result: the completed inputs, no audio."""
        return GenerationResult(
            items=[],
            sample_rate=audio_io.SAMPLE_RATE,
            task_type=request.task_type,
            model=self.paths.dit_name,
            variant=self.variant.name,
            metas=self.lm.inputs_of(request) | self.lm.metas_of(song),
            timings=timings,
            warnings=song.notes,
        )

    @torch.inference_mode()
    def _condition(
        self, request: GenerationRequest, plan: conditioning.TaskPlan, metas: str, refer: torch.Tensor
    ) -> Condition:
        comps = self.components
        with self.residency.use("text_encoder"):
            text = encode_text(
                comps.text_encoder,
                comps.tokenizer,
                caption_prompt(plan.instruction, request.caption, metas),
                lyric_prompt(request.vocal_language, request.lyrics_text),
            )
        with self.residency.use("condition_encoder"):
            states, _ = comps.condition_encoder(
                text_hidden_states=text.text_hidden,
                text_attention_mask=text.text_mask,
                lyric_hidden_states=text.lyric_hidden,
                lyric_attention_mask=text.lyric_mask,
                refer_audio_acoustic_hidden_states_packed=refer,
                refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=self.device),
            )
        return Condition(encoder_hidden_states=states, context_latents=plan.context())


class _Run:
    """One generation's progress callback and per-stage timings (seconds, rounded)."""

    def __init__(self, progress: ProgressCallback | None):
        self.report: ProgressCallback = progress or (lambda stage, fraction: None)
        self.timings: dict[str, float] = {}
        self.started = self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 4)
        self._clock = now

    def finish(self) -> None:
        self.timings["total"] = round(time.perf_counter() - self.started, 4)
        self.report("done", 1.0)
