"""``AceStep``: load a checkpoint once, then turn ``GenerationRequest``s into audio files.

The flow of one request: check it against the model (before any tensor exists), resolve seeds,
load the audio inputs, plan the task's conditioning, encode text, sample, decode, write files.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from loguru import logger

from acestep.checkpoints import CheckpointPaths, Components, load_components
from acestep.checkpoints.task_support import require_task
from acestep.engine import audio_io, conditioning, repaint, shaping
from acestep.engine.audio_inputs import load_inputs
from acestep.engine.codec import AudioCodec
from acestep.engine.diffusion import Diffusion, Sampled, sample
from acestep.engine.fast_dit import DitRunner, compiled_decoder
from acestep.engine.lm_stage import LmStage
from acestep.engine.load_plan import plan_load
from acestep.engine.output import GenerationError as GenerationError  # re-exported: a public name
from acestep.engine.output import check_latents, fit_length, result_metas, save_items
from acestep.engine.prompts import caption_prompt, dit_caption, encode_text, lyric_prompt, metas_string
from acestep.engine.quantize import quantize_components
from acestep.engine.sampling import Condition, Guidance, SamplerSettings
from acestep.engine.schedules import build_schedule
from acestep.engine.seeds import resolve_seeds
from acestep.engine.stage_clock import ProgressCallback, StageClock
from acestep.lora.adapters import Adapters
from acestep.memory.limits import Limits
from acestep.memory.mixed import use_rope_mode
from acestep.memory.precision import PrecisionPlan, apply_attention
from acestep.memory.quantization import QuantizationPlan
from acestep.memory.residency import Place, Residency, ResidencyPlan, resident_plan
from acestep.request import GenerationRequest
from acestep.result import GenerationResult
from acestep.tasks import COVER_TASKS, MAX_DURATION_S, flow_edit_applies


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
        quantization: QuantizationPlan | None = None,
    ):
        """``components`` are already stored as ``precision`` says (default: all in ``dtype``) and
        quantized as ``quantization`` says (default: none; the LM is quantized when it loads);
        ``fast`` is the DiT path (``off`` | ``compile`` | ``graphs``, see ``engine/fast_dit.py``)."""
        self.components = components
        self.paths = paths
        self.device = device
        self.dtype = dtype
        self.precision = precision or PrecisionPlan.uniform(dtype)
        self.quantization = quantization or QuantizationPlan()
        use_rope_mode(self.precision.rope)  # process-wide: the engine built last decides
        self.limits = limits
        self.residency = Residency(components.modules(), plan or resident_plan(str(device)))
        self.residency.settle()
        self.dit = DitRunner(components.transformer, fast)
        self.adapters = Adapters(components.transformer, paths.variant.tag)
        if self.adapters.fuse and self.quantization.dit != "none":
            # Quantized weights take no added delta (torchao has no add for them): runtime adapters.
            logger.info(
                f"ACESTEP_LORA_FUSE ignored: the DiT is {self.quantization.dit}; adapters run unfused"
            )
            self.adapters.fuse = False
        self._adapters_seen = self.adapters.version
        # Captured graphs point at the DiT's weights: only worth it while they stay put.
        self.dit.graphs_allowed = self.residency.plan.idle["dit"] is not Place.CPU
        self.codec = AudioCodec(components.vae, compute=device)
        if fast != "off":
            self.codec.compiled = compiled_decoder(components.vae)
        lm_seconds = limits.max_duration_lm if limits is not None else MAX_DURATION_S
        self.lm = LmStage(lm_folder, device, lm_seconds, self.precision.lm_torch_dtype, self.quantization.lm)
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
        quantization: QuantizationPlan | None = None,
    ) -> AceStep:
        """Load an upstream ``checkpoints/`` root, one DiT folder, or a diffusers folder.

        ``limits`` default to this device's tier (with the ``ACESTEP_*`` overrides) and ``plan``
        to the offload those limits imply; ``MAX_CUDA_VRAM`` caps this process's allocator.
        ``lm`` names the 5 Hz LM folder (default: ``ACESTEP_LM_MODEL_PATH``, else the first
        ``acestep-5Hz-lm-*`` in the checkpoints root); it loads when a request first needs it.
        ``dtype`` is a dtype or a policy name (``fp16-mixed``; default ``ACESTEP_DTYPE``, then the
        per-GPU policy) and ``fast`` the DiT path (default ``ACESTEP_DIT_FAST``, else ``off``).
        ``quantization`` defaults to ``ACESTEP_QUANTIZE``, else the tier's (int8 DiT below 20 GiB).
        """
        decided = plan_load(path, dit, device, dtype, limits, plan, lm, fast, quantization)
        paths, target, precision, fast = decided.paths, decided.target, decided.precision, decided.fast
        limits, quantization = decided.limits, decided.quantization
        started = time.perf_counter()
        # Weights land on the CPU first (quantized there); the plan then moves to the GPU what stays.
        components = load_components(paths, torch.device("cpu"), precision)
        quantize_components(components, quantization, paths)
        attention = apply_attention(components)
        engine = cls(
            components,
            paths,
            target,
            precision.torch_dtype,
            decided.plan,
            limits,
            decided.lm_folder,
            fast,
            precision,
            quantization,
        )
        logger.info(
            f"loaded {paths.dit_name} ({paths.layout} layout, {paths.variant.name}) for {target} as "
            f"{precision.name} ({attention} attention, fast DiT {fast}, quantized "
            f"{quantization.as_dict()}) in "
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
        require_task(self.paths, task, flow_edit_applies(task, request.flow_edit_morph))
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
        run = StageClock(progress)
        seeds = resolve_seeds(request.seed, request.batch_size, request.wants_random_seed)
        request, song = self._think(request, seeds, run)
        if lm_only:
            return self._lm_result(request, song, run.timings)
        self._attach_adapters(request, run)
        source, reference = load_inputs(request)
        run.lap("load_audio")
        plan, refer = self._encode_audio(request, source, reference, song, run)
        schedule, warnings = self._schedule(request, plan, song)
        diffusion = self._encode_text(request, plan, refer, run)
        warnings += diffusion.notes
        sampled = self._denoise(request, seeds, plan, schedule, diffusion, run)
        audio = self._decode(request, sampled.latents, plan, run)
        run.report("save", 0.0)
        items = save_items(request, audio, seeds, plan, output_dir, self.paths.dit_name)
        run.lap("save")
        return self._result(request, items, plan, sampled, song, warnings, run)

    def check_inputs(self, request: GenerationRequest, lm_only: bool = False) -> None:
        """Everything that can refuse a request, before any tensor is allocated."""
        if lm_only and not request.uses_lm:
            raise ValueError("an LM-only job needs thinking, sample_mode or use_format")
        self.check(request)
        if self.limits is not None:
            self.limits.check(request, uses_lm=request.uses_lm)

    def _attach_adapters(self, request: GenerationRequest, run: StageClock) -> None:
        """The request's LoRA adapters into the DiT; captured graphs of another set are dropped."""
        if self.adapters.apply(request.adapters):
            run.lap("lora")
        if self.adapters.version != self._adapters_seen:
            self.dit.reset()  # captured graphs ran another adapter set (or freed adapter weights)
            self._adapters_seen = self.adapters.version

    def _encode_audio(self, request, source, reference, song, run: StageClock):
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
            self.variant, request.inference_steps, request.shift, request.timesteps, self.dtype
        )
        warnings = plan.notes + notes + (song.notes if song else []) + request.field_notes
        if request.global_caption.strip() and not self.variant.is_lego_sft:
            warnings.append(f"global_caption: no effect on {self.paths.dit_name} (not a stem SFT checkpoint)")
        for note in warnings:
            logger.info(note)
        return schedule, warnings

    def _encode_text(self, request, plan: conditioning.TaskPlan, refer, run: StageClock) -> Diffusion:
        """The condition sets (a cover's late non-cover one too), guidance and sampler settings."""
        metas = metas_string(request.bpm, request.time_signature, request.key_scale, plan.metas_duration_s)
        flow_edit = flow_edit_applies(plan.task, request.flow_edit_morph)
        settings, notes = SamplerSettings.resolve(request, self.variant, flow_edit)
        diffusion = Diffusion(settings, self._condition(request, plan, metas, refer), notes=notes)
        if flow_edit:  # the source's own caption and lyrics, in the same prompt format
            source_text = {
                "caption": request.flow_edit_source_caption,
                "lyrics": request.flow_edit_source_lyrics,
            }
            source_request = request.model_copy(update=source_text)
            diffusion.source_condition = self._condition(source_request, plan, metas, refer)
        elif (plan.is_cover or plan.task in COVER_TASKS) and request.audio_cover_strength < 1.0:
            alt_plan = conditioning.non_cover_plan(plan, self.silence_latent)
            diffusion.late_condition = self._condition(request, alt_plan, metas, refer, stem_block=False)
        if self.variant.uses_guidance and request.guidance_scale > 1.0:
            diffusion.guidance = Guidance(
                scale=request.guidance_scale,
                interval=(request.cfg_interval_start, request.cfg_interval_end),
                null_embedding=self._null_embedding,
                variant=request.guidance,
                params=dict(request.guidance_params or {}),
            )
        run.lap("text_encode")
        return diffusion

    def _denoise(self, request, seeds, plan, schedule, diffusion: Diffusion, run: StageClock) -> Sampled:
        """Seeded noise through the DiT's sampling loop (``engine/diffusion.py``)."""
        with self.residency.use("dit"):
            sampled = sample(
                self.dit,
                request,
                plan,
                schedule,
                diffusion,
                seeds,
                self.codec.latent_dim,
                self.device,
                self.dtype,
                on_step=lambda done, total: run.report("diffusion", done / total),
            )
        check_latents(sampled.latents, self.precision.name)
        run.lap("dit")
        return sampled

    def _decode(
        self, request, latents: torch.Tensor, plan: conditioning.TaskPlan, run: StageClock
    ) -> torch.Tensor:
        """Shaped latents to audio at the planned length, kept below clipping; repaint splices the
        source back outside its window."""
        run.report("decode", 0.0)
        latents = shaping.shape_latents(latents, request.latent_shift, request.latent_rescale)
        with self.residency.use("vae"):
            audio = self.codec.decode(latents)
        audio = audio_io.anti_clip(fit_length(audio, plan))
        if plan.repaint is not None and plan.repaint.splice and plan.source_wav is not None:
            seconds = plan.repaint.wav_crossfade_s
            audio = repaint.splice_waveform(audio, plan.source_wav, plan.window_samples, seconds)
        run.lap("vae_decode")
        return audio

    def _result(
        self, request, items, plan, sampled: Sampled, song, warnings, run: StageClock
    ) -> GenerationResult:
        run.finish()
        return GenerationResult(
            items=items,
            sample_rate=audio_io.SAMPLE_RATE,
            task_type=plan.task,
            model=self.paths.dit_name,
            variant=self.variant.name,
            metas=result_metas(request, plan, sampled.schedule, sampled.retake_seeds)
            | (self.lm.metas_of(song) if song else {}),
            timings=run.timings,
            warnings=warnings,
        )

    def _think(self, request: GenerationRequest, seeds: list[int], run: StageClock):
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
        self,
        request: GenerationRequest,
        plan: conditioning.TaskPlan,
        metas: str,
        refer: torch.Tensor,
        stem_block: bool = True,
    ) -> Condition:
        """The DiT's condition set; ``stem_block``: a stem SFT checkpoint's global/local caption
        (not for a cover's late switch, whose caption upstream keeps plain)."""
        comps = self.components
        lego_sft = self.variant.is_lego_sft and stem_block
        explicit = request.chunk_mask_mode != "auto"
        caption = dit_caption(request.caption, request.global_caption, plan.instruction, lego_sft, explicit)
        with self.residency.use("text_encoder"):
            text = encode_text(
                comps.text_encoder,
                comps.tokenizer,
                caption_prompt(plan.instruction, caption, metas),
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
