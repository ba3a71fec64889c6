"""What the LM does for one generation request: rewrite inputs, write the CoT, write codes.

Order (spec lm.md sections 4 and 6):
1. ``sample_mode`` / ``sample_query`` expands a short query, ``use_format`` rewrites caption and
   lyrics (both free text after a CoT, no CFG);
2. phase 1 writes the CoT metadata once for the batch (user values forced, not generated);
3. with ``thinking`` (and no user codes, and not lego), phase 2 writes each item's audio codes
   from that item's own seed, exactly ``duration * 5`` of them.
User values always win; the LM fills what is missing. The result is a set of request updates
plus per-item code strings, which the engine turns into DiT hints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from acestep.engine.request import INSTRUMENTAL_LYRICS, GenerationRequest
from acestep.engine.tasks import AUTO_DURATION_S, CODES_PER_SECOND
from acestep.lm import prompts
from acestep.lm.constraints import CotConstraint
from acestep.lm.cot import metas_for_dit, parse_output, serialize_cot
from acestep.lm.model import LanguageModel
from acestep.lm.sampling import SamplingParams

COT_TOKEN_BUDGET = 1024  # bpm..timesignature with a 512-token caption fits well inside
TEXT_TOKEN_BUDGET = 2048  # sample / format: a CoT plus lyrics
MIN_DURATION_S, MAX_DURATION_S = 10, 600


@dataclass
class SongPlan:
    """The LM's contribution to one request."""

    updates: dict = field(default_factory=dict)  # GenerationRequest field -> value
    codes: list[str] | None = None  # per batch item, when phase 2 ran
    cot: str = ""
    lm_metas: dict = field(default_factory=dict)  # what the LM wrote (before user values won)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tokens: int = 0


def sampling_of(request: GenerationRequest, cfg: bool = True) -> SamplingParams:
    return SamplingParams(
        temperature=request.lm_temperature,
        cfg_scale=request.lm_cfg_scale if cfg else 1.0,
        top_k=request.lm_top_k,
        top_p=request.lm_top_p,
        repetition_penalty=request.lm_repetition_penalty,
    )


def user_metas(request: GenerationRequest) -> dict[str, str]:
    """The metadata the user wrote, as the CoT spells it (these are forced, never generated)."""
    metas: dict[str, str] = {}
    if request.bpm:
        metas["bpm"] = str(request.bpm)
    if request.key_scale:
        metas["keyscale"] = request.key_scale
    if request.time_signature:
        metas["timesignature"] = request.time_signature
    if request.audio_duration > 0:
        metas["duration"] = str(int(min(max(request.audio_duration, MIN_DURATION_S), MAX_DURATION_S)))
    return metas


def plan_song(lm: LanguageModel, request: GenerationRequest, seeds: list[int]) -> SongPlan:
    plan = SongPlan()
    caption, lyrics = request.caption, request.lyrics_text
    text_params = sampling_of(request, cfg=False)
    lm_metas: dict = {}

    def timed(name: str, run):
        started = time.perf_counter()
        result = run()
        plan.timings[name] = round(time.perf_counter() - started, 4)
        plan.tokens += len(result.token_ids)
        return result

    if request.sample_mode or request.sample_query.strip():
        prompt = prompts.sample_prompt(lm.tokenizer, request.sample_query, request.instrumental)
        out = parse_output(timed("lm_sample", lambda: _free_text(lm, prompt, text_params, seeds[0])).text)
        lm_metas.update(out.metas)
        caption = str(out.metas.get("caption") or caption)
        lyrics = out.lyrics or (INSTRUMENTAL_LYRICS if request.instrumental else lyrics)
        plan.updates.update(caption=caption, lyrics=lyrics)
    if request.use_format:
        prompt = prompts.format_prompt(lm.tokenizer, caption, lyrics)
        out = parse_output(timed("lm_format", lambda: _free_text(lm, prompt, text_params, seeds[0])).text)
        lm_metas.update(out.metas)
        caption = str(out.metas.get("caption") or caption)
        lyrics = out.lyrics or lyrics
        plan.updates.update(caption=caption, lyrics=lyrics)

    given = user_metas(request)
    wants_metas = request.use_cot_metas and len(given) < 4
    if wants_metas or request.use_cot_caption or request.use_cot_language:
        constraint = CotConstraint(
            lm.tables,
            phase="cot",
            user_metas=given,
            use_caption=request.use_cot_caption,
            use_language=request.use_cot_language,
        )
        run = timed(
            "lm_cot",
            lambda: lm.run(
                prompts.phase1_prompt(lm.tokenizer, caption, lyrics),
                prompts.unconditional_prompt(lm.tokenizer, lyrics, request.lm_negative_prompt, None),
                constraint,
                sampling_of(request),
                seeds[0],
                COT_TOKEN_BUDGET,
            ),
        )
        lm_metas.update(parse_output(run.text).metas)
    plan.lm_metas = dict(lm_metas)

    found = metas_for_dit(lm_metas)
    fill = {"bpm": request.bpm, "key_scale": request.key_scale, "time_signature": request.time_signature}
    for name, current in fill.items():
        if not current and name in found:
            plan.updates[name] = found[name]
    if request.audio_duration <= 0 and "audio_duration" in found:
        plan.updates["audio_duration"] = float(found["audio_duration"])
    if request.use_cot_caption and "caption" in found:
        plan.updates["caption"] = caption = found["caption"]
    if request.use_cot_language and request.vocal_language == "unknown" and "vocal_language" in found:
        # Upstream read a key the parser never writes, so the LM's language never reached the DiT.
        plan.updates["vocal_language"] = found["vocal_language"]

    if request.thinking and not request.audio_code_string.strip():
        if request.task_type != "text2music":
            # Codes replace the source (cover); lego, extract and complete must keep theirs.
            plan.notes.append(
                f"{request.task_type} keeps its source audio: the LM wrote metadata but no audio codes"
            )
        else:
            _write_codes(lm, request, seeds, caption, lyrics, plan)
    return plan


def _free_text(lm: LanguageModel, prompt: str, params: SamplingParams, seed: int):
    constraint = CotConstraint(lm.tables, phase="understand")
    return lm.run(prompt, None, constraint, params, seed, TEXT_TOKEN_BUDGET)


def _write_codes(
    lm: LanguageModel, request: GenerationRequest, seeds: list[int], caption: str, lyrics: str, plan: SongPlan
) -> None:
    duration = plan.updates.get("audio_duration", request.audio_duration)
    if duration <= 0:
        duration = AUTO_DURATION_S
        plan.notes.append(f"no duration from the user or the LM: writing codes for {AUTO_DURATION_S:.0f} s")
    target = max(int(duration * CODES_PER_SECOND), 1)
    cot_metas = {
        "bpm": plan.updates.get("bpm", request.bpm),
        "caption": caption,
        "duration": int(duration),
        "keyscale": plan.updates.get("key_scale", request.key_scale),
        "language": plan.updates.get("vocal_language", request.vocal_language),
        "timesignature": plan.updates.get("time_signature", request.time_signature),
    }
    plan.cot = serialize_cot(cot_metas)
    prompt = prompts.phase2_prompt(lm.tokenizer, caption, lyrics, plan.cot)
    uncond = prompts.unconditional_prompt(lm.tokenizer, lyrics, request.lm_negative_prompt, plan.cot)
    params = sampling_of(request)
    codes: list[str] = []
    started = time.perf_counter()
    for seed in seeds:  # one item at a time, each from its own seed: any batch size, same codes
        constraint = CotConstraint(lm.tables, phase="codes", target_codes=target)
        run = lm.run(prompt, uncond, constraint, params, seed, target + 8)
        plan.tokens += len(run.token_ids)
        values = [lm.vocab.code_of_id[t] for t in run.token_ids if t in lm.vocab.code_of_id]
        if len(values) != target:
            raise RuntimeError(f"the LM wrote {len(values)} audio codes, {target} were required")
        codes.append("".join(lm.vocab.code_token(v) for v in values))
    plan.timings["lm_codes"] = round(time.perf_counter() - started, 4)
    plan.codes = codes
    plan.updates["audio_duration"] = target / CODES_PER_SECOND
