"""The measured scenarios: voice-to-voice latency, barge-in, capacity, cold start.

Each drives a :class:`~benchmarks.systems.System` with Twilio callers and returns plain
JSON-ready dicts; nothing here knows which stack it measures. Definitions (all times are
wall-clock on one machine; the caller's are wire times):

- *voice-to-voice*: first agent audio message received − the caller's last voiced frame
  sent;
- *endpoint silence*: the frame on which the stack's VAD decided "speech ended" (the
  last frame sent before its decision) − the last voiced frame: the silence the VAD
  waited for, not counted as overhead;
- *overhead*: voice-to-voice − endpoint silence − the stand-ins' delays (STT final + LLM
  reply + TTS first byte): what the runtime itself added, transport in and out included;
- *barge-in*: ``clear`` received − the VAD's speech-start decision, and − the first voiced
  frame sent;
- *cold start*: first greeting audio received − the stream's ``start`` sent − the TTS
  stand-in's delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.caller import BenchCaller, Pacer, split_frames
from benchmarks.stats import linear_slope, percentile, summary
from benchmarks.systems import System
from runtime.metrics import lag_summary

QUESTION = "what time does the store open tomorrow"
INTERRUPTION = "wait, actually I have another question"
CALL_ERRORS = (TimeoutError, ConnectionError, aiohttp.ClientError, RuntimeError, OSError)


@functools.lru_cache(maxsize=8)
def utterance(text: str) -> tuple[tuple[bytes, ...], tuple[bool, ...]]:
    """espeak-ng speech as Twilio μ-law frames, and which frames are voiced."""
    from tests.support.speech import speech

    frames, voiced = split_frames(speech(text, rate=8000, encoding="u-law", bits=8))
    return tuple(frames), tuple(voiced)


def say(caller: BenchCaller, text: str) -> Any:
    frames, voiced = utterance(text)
    return caller.say_frames(list(frames), list(voiced))


@dataclass
class CallRecord:
    caller: BenchCaller
    greeting_s: float | None = None
    turns: list[dict[str, float]] = field(default_factory=list)
    barges: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None


async def _dial(system: System, pacer: Pacer, record: CallRecord) -> BenchCaller:
    caller = record.caller
    await caller.__aenter__()
    start = caller.start_sent_at
    first = await caller.wait_audio_after(start, 20)
    record.greeting_s = first - start
    await caller.wait_silent(15)
    return caller


async def _close(record: CallRecord) -> None:
    caller = record.caller
    with contextlib.suppress(*CALL_ERRORS):
        await caller.hang_up()
    with contextlib.suppress(*CALL_ERRORS):
        await caller.__aexit__(None, None, None)


# --------------------------------------------------------------------------- latency


async def _converse(system: System, pacer: Pacer, record: CallRecord, *, delay: float,
                    turns: int, rng: random.Random) -> None:
    await asyncio.sleep(delay)
    try:
        caller = await _dial(system, pacer, record)
        for _ in range(turns):
            await asyncio.sleep(rng.uniform(0.4, 1.0))
            said = say(caller, QUESTION)
            await said.done.wait()
            assert said.last_voiced_at is not None and said.first_voiced_at is not None
            heard = await caller.wait_audio_after(said.last_voiced_at, 10)
            record.turns.append({"first_voiced": said.first_voiced_at,
                                 "last_voiced": said.last_voiced_at, "first_audio": heard})
            await caller.wait_silent(15)
    except CALL_ERRORS as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        await _close(record)


def _stagger(calls: int) -> float:
    """Spread call starts: real calls do not arrive on the same millisecond."""
    return min(6.0, 0.06 * calls)


def turn_row(call: int, number: int, turn: dict[str, float], decisions: list[float],
             frame_sent_before: Callable[[float], float | None], *, budget_s: float,
             configured_s: float) -> dict[str, Any]:
    """One answered turn: voice-to-voice, and — when one of the stack's "speech ended"
    ``decisions`` falls between the caller's last voiced frame and the first agent audio —
    the endpoint silence and the overhead (docs/benchmarks.md, "Definitions")."""
    measured = turn["first_audio"] - turn["last_voiced"]
    row: dict[str, Any] = {"call": call, "turn": number + 1,
                           "voice_to_voice_ms": round(measured * 1000, 2)}
    stop = next((at for at in reversed(decisions)
                 if turn["last_voiced"] < at < turn["first_audio"]), None)
    frame = frame_sent_before(stop) if stop is not None else None
    if stop is not None and frame is not None:
        silence = frame - turn["last_voiced"]
        row["endpoint_silence_ms"] = round(silence * 1000, 2)
        row["after_vad_ms"] = round((turn["first_audio"] - stop) * 1000, 2)
        row["overhead_ms"] = round((measured - silence - budget_s) * 1000, 2)
        row["overhead_gross_ms"] = round((measured - silence - configured_s) * 1000, 2)
    return row


async def latency(system: System, calls: int, turns: int, delays: dict[str, float],
                  floor_s: float = 0.0, progress: Callable[[str], None] = lambda _: None
                  ) -> dict[str, Any]:
    """``calls`` concurrent calls, ``turns`` question/answer turns each."""
    rng = random.Random(calls)
    pacer = Pacer()
    pacer.start()
    window = _stagger(calls)
    records = [CallRecord(system.caller(pacer)) for _ in range(calls)]
    before = time.time()
    try:
        await asyncio.gather(*(
            _converse(system, pacer, r, delay=window * i / max(1, calls), turns=turns, rng=rng)
            for i, r in enumerate(records)))
    finally:
        await pacer.stop()
    progress(f"{system.name} {calls} calls: reading VAD decisions")
    vad = await system.vad_events([r.caller for r in records])
    configured = delays["stt"] + delays["llm"] + delays["tts"]
    budget = configured + floor_s  # what the stand-ins really take, measured by calibrate()
    rows: list[dict[str, Any]] = []
    unmatched = 0
    for index, record in enumerate(records):
        decisions = [at for kind, at in vad.get(record.caller, []) if kind == "vad_stop"]
        for number, turn in enumerate(record.turns):
            row = turn_row(index, number, turn, decisions, record.caller.frame_sent_before,
                           budget_s=budget, configured_s=configured)
            unmatched += "overhead_ms" not in row
            rows.append(row)
    greetings = [r.greeting_s for r in records if r.greeting_s is not None]
    errors = [r.error for r in records if r.error]
    lateness = [x * 1000 for x in pacer.late[5:]]
    return {
        "framework": system.name,
        "calls": calls,
        "turns_per_call": turns,
        "started_at": before,
        "turns": rows,
        # a turn counts when the stack's VAD decided between the caller's speech and the
        # audio heard; otherwise that audio was something else (a late greeting, a backlog)
        "answered": len([r for r in rows if "overhead_ms" in r]),
        "expected": calls * turns,
        "errors": errors[:20],
        "error_count": len(errors),
        "unmatched_vad": unmatched,
        "cold_start_ms": [round((g - delays["tts"]) * 1000, 2) for g in greetings],
        "load_generator_lag_p99_ms": round(percentile(lateness, 0.99), 2) if lateness else None,
        "summary": {
            "voice_to_voice_ms": summary(r["voice_to_voice_ms"] for r in rows
                                         if "overhead_ms" in r),
            "endpoint_silence_ms": summary(r.get("endpoint_silence_ms") for r in rows),
            "overhead_ms": summary(r.get("overhead_ms") for r in rows),
            "overhead_gross_ms": summary(r.get("overhead_gross_ms") for r in rows),
            "after_vad_ms": summary(r.get("after_vad_ms") for r in rows),
            "cold_start_ms": summary((g - delays["tts"]) * 1000 for g in greetings),
        },
    }


# --------------------------------------------------------------------------- barge-in


async def _interrupt(system: System, pacer: Pacer, record: CallRecord, *, delay: float,
                     reps: int, rng: random.Random) -> None:
    await asyncio.sleep(delay)
    try:
        caller = await _dial(system, pacer, record)
        for _ in range(reps):
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            question = say(caller, QUESTION)
            await question.done.wait()
            assert question.last_voiced_at is not None
            await caller.wait_audio_after(question.last_voiced_at, 10)
            await asyncio.sleep(rng.uniform(0.3, 0.6))  # the agent is speaking
            cut = say(caller, INTERRUPTION)
            while cut.first_voiced_at is None:  # noqa: ASYNC110 - set by the pacer's tick
                await asyncio.sleep(0.005)
            cleared = await caller.wait_clear_after(cut.first_voiced_at - 0.001, 5)
            record.barges.append({"first_voiced": cut.first_voiced_at, "clear": cleared})
            await cut.done.wait()
            assert cut.last_voiced_at is not None
            await caller.wait_audio_after(cut.last_voiced_at, 10)  # the answer to it
            await caller.wait_silent(15)
    except CALL_ERRORS as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        await _close(record)


async def barge_in(system: System, calls: int, reps: int) -> dict[str, Any]:
    rng = random.Random(7)
    pacer = Pacer()
    pacer.start()
    window = _stagger(calls)
    records = [CallRecord(system.caller(pacer)) for _ in range(calls)]
    try:
        await asyncio.gather(*(
            _interrupt(system, pacer, r, delay=window * i / max(1, calls), reps=reps, rng=rng)
            for i, r in enumerate(records)))
    finally:
        await pacer.stop()
    vad = await system.vad_events([r.caller for r in records])
    rows: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        # what made the stack interrupt: its VAD's speech start or (Pipecat) a transcript
        starts = [(at, kind) for kind, at in vad.get(record.caller, [])
                  if kind in ("vad_start", "transcript")]
        for barge in record.barges:
            decided, trigger = next(
                ((at, kind) for at, kind in starts
                 if barge["first_voiced"] - 0.3 <= at <= barge["clear"] + 0.001), (None, None))
            reaction = barge["clear"] - barge["first_voiced"]
            row: dict[str, Any] = {"call": index, "from_first_voiced_ms": round(reaction * 1000, 2)}
            if decided is not None:
                row["from_vad_decision_ms"] = round((barge["clear"] - decided) * 1000, 2)
                row["trigger"] = trigger
            rows.append(row)
    errors = [r.error for r in records if r.error]
    return {
        "framework": system.name,
        "calls": calls,
        "reps": reps,
        "barge_ins": rows,
        "errors": errors[:20],
        "error_count": len(errors),
        "summary": {
            "from_vad_decision_ms": summary((r.get("from_vad_decision_ms") for r in rows), 2),
            "from_first_voiced_ms": summary(r["from_first_voiced_ms"] for r in rows),
        },
    }


# --------------------------------------------------------------------------- capacity


@dataclass
class _LoadCall:
    record: CallRecord
    answered: list[tuple[float, float]] = field(default_factory=list)  # (at, latency s)
    failures: list[float] = field(default_factory=list)
    up: bool = False


async def _keep_talking(system: System, pacer: Pacer, call: _LoadCall, stop: asyncio.Event,
                        rng: random.Random) -> None:
    """A caller that asks, listens to the whole answer, pauses, and asks again."""
    try:
        caller = await _dial(system, pacer, call.record)
        call.up = True
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 2.5))
            if stop.is_set():
                break
            said = say(caller, QUESTION)
            await said.done.wait()
            assert said.last_voiced_at is not None
            try:
                heard = await caller.wait_audio_after(said.last_voiced_at, 8)
                call.answered.append((heard, heard - said.last_voiced_at))
                await caller.wait_silent(15)
            except TimeoutError:
                call.failures.append(time.time())
    except CALL_ERRORS as exc:
        call.record.error = f"{type(exc).__name__}: {exc}"
        call.failures.append(time.time())
    finally:
        call.up = False
        await _close(call.record)


async def capacity(system: System, levels: list[int], *, settle_s: float, window_s: float,
                   progress: Callable[[str], None] = lambda _: None,
                   max_failed_steps: int = 1) -> dict[str, Any]:
    """Add calls step by step; at each level measure the worker over ``window_s``."""
    rng = random.Random(11)
    pacer = Pacer()
    pacer.start()
    stop = asyncio.Event()
    calls: list[_LoadCall] = []
    tasks: list[asyncio.Task[None]] = []
    steps: list[dict[str, Any]] = []
    failed_steps = 0
    session = aiohttp.ClientSession()
    idle_rss = system.rss_bytes()
    try:
        for level in levels:
            progress(f"{system.name} capacity: {level} calls")
            new = level - len(calls)
            ramp = min(5.0, 0.05 * new)
            for _ in range(new):
                call = _LoadCall(CallRecord(system.caller(pacer)))
                calls.append(call)
                tasks.append(asyncio.create_task(_keep_talking(system, pacer, call, stop, rng)))
                await asyncio.sleep(ramp / max(1, new))
            await asyncio.sleep(settle_s)
            loop0 = await system.loop_counters(session)
            cpu0, t0 = system.cpu_seconds(), time.time()
            late0 = len(pacer.late)
            under0 = sum(c.record.caller.underruns for c in calls)
            engine0 = await system.engine_underruns([c.record.caller for c in calls])
            await asyncio.sleep(window_s)
            loop1 = await system.loop_counters(session)
            cpu1, t1 = system.cpu_seconds(), time.time()
            engine1 = await system.engine_underruns([c.record.caller for c in calls])
            rss = system.rss_bytes()
            live = sum(1 for c in calls if c.up)
            answered = [lat * 1000 for c in calls for at, lat in c.answered if t0 <= at <= t1]
            failures = sum(1 for c in calls for at in c.failures if t0 - 10 <= at <= t1)
            lag = lag_summary(loop0, loop1)
            cpu_s = cpu1 - cpu0
            lateness = [x * 1000 for x in pacer.late[late0:]]
            client_underruns = sum(c.record.caller.underruns for c in calls) - under0
            engine_underruns = (None if engine0 is None or engine1 is None
                                else engine1 - engine0)
            step = {
                "calls": level,
                "live_calls": live,
                "window_s": round(t1 - t0, 2),
                "loop_lag": lag,
                "cpu_core_fraction": round(cpu_s / (t1 - t0), 3),
                "cpu_ms_per_call_second": round(cpu_s * 1000 / max(1, live) / (t1 - t0), 3),
                "rss_mb": round(rss / 2**20, 1),
                "turns_answered": len(answered),
                "reply_latency_ms": summary(answered),
                "failures": failures,
                "client_underruns": client_underruns,
                "engine_underruns": engine_underruns,
                "load_generator_lag_p99_ms": round(percentile(lateness, 0.99), 2)
                if lateness else None,
            }
            step["sustained"] = bool(
                live == level and lag["p99_ms"] < 20 and failures == 0
                and client_underruns == 0 and not engine_underruns and len(answered) > 0)
            steps.append(step)
            progress(f"{system.name} capacity: {level} calls: lag p99 "
                     f"{lag['p99_ms']} ms, cpu {step['cpu_core_fraction']:.0%}, "
                     f"{'ok' if step['sustained'] else 'NOT sustained'}")
            if not step["sustained"]:
                failed_steps += 1
                if failed_steps >= max_failed_steps:
                    break
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pacer.stop()
        await session.close()
    sustained = [s["calls"] for s in steps if s["sustained"]]
    good = [s for s in steps if s["live_calls"]]
    slope = linear_slope([float(s["live_calls"]) for s in good], [s["rss_mb"] for s in good])
    best = max((s for s in steps if s["sustained"]), key=lambda s: s["calls"], default=None)
    return {
        "framework": system.name,
        "steps": steps,
        "max_sustained_calls": max(sustained) if sustained else 0,
        "first_failed_level": next((s["calls"] for s in steps if not s["sustained"]), None),
        "idle_rss_mb": round(idle_rss / 2**20, 1),
        "rss_mb_per_call": round(slope, 3) if slope is not None else None,
        # at the largest sustained level, where fixed costs are spread thinnest
        "cpu_ms_per_call_second": best["cpu_ms_per_call_second"] if best else None,
    }
