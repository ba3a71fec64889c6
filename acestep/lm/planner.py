"""What the LM does for one generation request: rewrite inputs, write the CoT, write codes.

Order (docs/lm.md):
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

from acestep.lm import prompts
from acestep.lm.constraints import CotConstraint
from acestep.lm.cot import metas_for_dit, parse_output, serialize_cot
from acestep.lm.model import LanguageModel
from acestep.lm.sampling import SamplingParams
from acestep.request import INSTRUMENTAL_LYRICS, GenerationRequest
from acestep.tasks import AUTO_DURATION_S, CODES_PER_SECOND, MAX_DURATION_S, MIN_DURATION_S

COT_TOKEN_BUDGET = 1024  # bpm..timesignature with a 512-token caption fits well inside
COT_ALLOWANCE = 48  # tokens of the phase-2 CoT beyond its caption, for the early budget check
TEXT_TOKEN_BUDGET = 2048  # sample / format: a CoT plus lyrics


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
    rewritten: dict = {}  # metadata written by sample mode / format (the LM's, not the user's)

    def timed(name: str, run):
        started = time.perf_counter()
        result = run()
        plan.timings[name] = round(time.perf_counter() - started, 4)
        plan.tokens += len(result.token_ids)
        return result

    if request.sample_mode or request.sample_query.strip():
        prompt = prompts.sample_prompt(lm.tokenizer, request.sample_query, request.instrumental)
        out = parse_output(timed("lm_sample", lambda: _free_text(lm, prompt, text_params, seeds[0])).text)
        rewritten.update(out.metas)
        caption = str(out.metas.get("caption") or caption)
        lyrics = out.lyrics or (INSTRUMENTAL_LYRICS if request.instrumental else lyrics)
        plan.updates.update(caption=caption, lyrics=lyrics)
    if request.use_format:
        prompt = prompts.format_prompt(lm.tokenizer, caption, lyrics)
        out = parse_output(timed("lm_format", lambda: _free_text(lm, prompt, text_params, seeds[0])).text)
        rewritten.update(out.metas)
        caption = str(out.metas.get("caption") or caption)
        lyrics = out.lyrics or lyrics
        plan.updates.update(caption=caption, lyrics=lyrics)

    wants_codes = request.thinking and not request.audio_code_string.strip()
    if wants_codes and request.task_type == "text2music" and request.audio_duration > 0:
        _check_budget(lm, request.audio_duration, prompts.phase1_prompt(lm.tokenizer, caption, lyrics))
    # Values the user gave, then those sample/format wrote, are forced into the CoT, not regenerated.
    forced = user_metas(request)
    for key, value in user_metas_from(metas_for_dit(rewritten)).items():
        forced.setdefault(key, value)
    cot_caption = request.use_cot_caption and not rewritten.get("caption")
    cot: dict = {}
    needs_cot = (request.use_cot_metas and len(forced) < 4) or cot_caption or request.use_cot_language
    if request.thinking and needs_cot:  # phase 1 runs for thinking only; sample/format wrote a CoT already
        constraint = CotConstraint(
            lm.tables,
            phase="cot",
            user_metas=forced,
            use_caption=cot_caption,
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
        cot = parse_output(run.text).metas
    plan.lm_metas = rewritten | cot
    _merge(request, plan, metas_for_dit(rewritten), metas_for_dit(cot))

    if wants_codes:
        if request.task_type != "text2music":
            # Codes replace the source (cover); lego, extract and complete must keep theirs.
            plan.notes.append(
                f"{request.task_type} keeps its source audio: the LM wrote metadata but no audio codes"
            )
        else:
            cot_caption_text = str(cot["caption"]) if cot.get("caption") else None
            _write_codes(lm, request, seeds, caption, lyrics, cot_caption_text, plan)
    return plan


def user_metas_from(found: dict) -> dict[str, str]:
    """Request-field metadata (``metas_for_dit`` output) spelled as the CoT spells it."""
    names = {"bpm": "bpm", "key_scale": "keyscale", "time_signature": "timesignature"}
    metas = {cot: str(found[field]) for field, cot in names.items() if field in found}
    if "audio_duration" in found:
        metas["duration"] = str(int(found["audio_duration"]))
    return metas


def _merge(request: GenerationRequest, plan: SongPlan, rewritten: dict, cot: dict) -> None:
    """User values win; then sample/format's; then phase 1's (bpm, key, time signature and duration
    only with ``use_cot_metas``, the caption with ``use_cot_caption``, the language with
    ``use_cot_language``)."""
    filled = rewritten | (
        {k: v for k, v in cot.items() if k not in rewritten} if request.use_cot_metas else {}
    )
    given = {"bpm": request.bpm, "key_scale": request.key_scale, "time_signature": request.time_signature}
    for name, current in given.items():
        if not current and name in filled:
            plan.updates[name] = filled[name]
    if request.audio_duration <= 0 and "audio_duration" in filled:
        plan.updates["audio_duration"] = float(filled["audio_duration"])
    if request.use_cot_caption and "caption" in cot:
        plan.updates["caption"] = cot["caption"]
    if request.vocal_language == "unknown":
        # Upstream read a key the parser never writes, so the LM's language never reached the DiT.
        language = cot.get("vocal_language") if request.use_cot_language else None
        language = language or rewritten.get("vocal_language")
        if language:
            plan.updates["vocal_language"] = language


def _check_budget(lm: LanguageModel, duration: float, prompt: str, allowance: int = COT_ALLOWANCE) -> None:
    """Refuse before decoding when the codes cannot fit the LM's context after the prompt
    (``allowance``: tokens the prompt will still grow by, the phase-2 CoT)."""
    target = max(int(duration * CODES_PER_SECOND), 1)
    room = lm.max_model_len - 64 - len(lm.encode(prompt)) - allowance
    if target + 8 > room:
        raise ValueError(
            f"{duration:.0f} s needs {target} audio codes, but the LM's {lm.max_model_len}-token context "
            f"holds about {max(room, 0)} after this caption and lyrics; shorten the duration or the lyrics"
        )


def _free_text(lm: LanguageModel, prompt: str, params: SamplingParams, seed: int):
    constraint = CotConstraint(lm.tables, phase="understand")
    return lm.run(prompt, None, constraint, params, seed, TEXT_TOKEN_BUDGET)


def _write_codes(
    lm: LanguageModel,
    request: GenerationRequest,
    seeds: list[int],
    caption: str,
    lyrics: str,
    cot_caption: str | None,
    plan: SongPlan,
) -> None:
    duration = plan.updates.get("audio_duration", request.audio_duration)
    if duration <= 0:
        duration = AUTO_DURATION_S
        plan.notes.append(f"no duration from the user or the LM: writing codes for {AUTO_DURATION_S:.0f} s")
    target = max(int(duration * CODES_PER_SECOND), 1)
    language = plan.updates.get("vocal_language", request.vocal_language)
    cot_metas = {
        "bpm": plan.updates.get("bpm", request.bpm),
        "caption": cot_caption,  # only what phase 1 wrote (absent with use_cot_caption off)
        "duration": int(duration),
        "keyscale": plan.updates.get("key_scale", request.key_scale),
        "language": language if language != "unknown" else None,
        "timesignature": plan.updates.get("time_signature", request.time_signature),
    }
    plan.cot = serialize_cot(cot_metas)
    # The same user turn as phase 1 (the caption and lyrics the user, or sample/format, gave).
    prompt = prompts.phase2_prompt(lm.tokenizer, caption, lyrics, plan.cot)
    uncond = prompts.unconditional_prompt(lm.tokenizer, lyrics, request.lm_negative_prompt, plan.cot)
    _check_budget(lm, duration, prompt, allowance=0)
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
