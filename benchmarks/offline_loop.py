"""Per-turn latency of the offline loop (pocketsphinx → playbook → espeak), stage by stage.

Runs the real worker in-process with the embedded API, places calls over the local
WebSocket with espeak-ng speech sent in real time, and prints the median and p95 of each
stage of every turn. From the worker's ``turn.metrics`` (measured from the VAD's end of
speech): ``endpointing``, ``stt_final``, ``llm_ttft``, ``tts_ttfb``, ``voice_to_voice``.
Added by this benchmark, on the same clock (the worker runs in this process):

- ``vad_end_error``: the VAD's end of speech minus the true end of the signal (the last
  10 ms above -50 dBFS);
- ``vad_decision``: the VAD's end of speech → the moment it decided (``user.speech_stopped``
  arrives; the STT is finalized then) — ``vad.min_silence_ms`` plus frame rounding;
- ``stt_finalize``: that decision → the final transcript;
- ``min_delay_hold``: the final transcript → the endpoint (the reply waiting for
  ``endpointing.min_delay_ms``; ~0 when the transcript came last);
- ``caller_voice_to_voice``: the true end of the caller's speech → the first agent audio
  the caller received. The caller sends each 20 ms frame when it is complete, as a
  microphone does, so the speech ends 20 ms before the frame holding its last sample is sent.

    python -m benchmarks.offline_loop --calls 3 --turns 3
    python -m benchmarks.offline_loop --phone              # μ-law 8 kHz, like a carrier
    python -m benchmarks.offline_loop --agent '{"vad": {"min_silence_ms": 300}}'

``--agent`` is a JSON merge patch applied to the default agent before the calls.
The first turn of the first call is the first utterance of the decoding process (no
cepstral mean known yet, see providers/offline/_sphinx_host.py); ``--verbose`` marks it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks.stats import percentile

QUESTIONS = (
    "what time does the store open tomorrow",
    "where are you located",
    "i would like to book a table for two",
)
FRAME_S = 0.02



def speech_end_s(pcm16: bytes, rate: int) -> float:
    """Where the speech in ``pcm16`` really ends: the end of its last 10 ms above -50 dBFS
    (espeak-ng leaves ~0.4 s of silence after it)."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    win = rate // 100
    n = len(samples) // win
    rms = np.sqrt(np.mean(samples[: n * win].reshape(n, win) ** 2, axis=1))
    active = np.flatnonzero(rms > 32768 * 10 ** (-50 / 20))
    return float(active[-1] + 1) * 0.01 if active.size else 0.0


class _SentClock(deque[bytes]):
    """The caller's queue of outgoing frames, noting when a chosen frame leaves it."""

    def __init__(self) -> None:
        super().__init__()
        self.watch: bytes | None = None
        self.sent_at: float | None = None

    def popleft(self) -> bytes:
        frame = super().popleft()
        if frame is self.watch:
            self.sent_at = time.monotonic()
            self.watch = None
        return frame


async def _agent_id(url: str, key: str, patch: dict[str, Any] | None) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.get(f"{url}/v1/agents") as r:
            agent_id = str((await r.json())["agents"][0]["id"])
        if patch:
            async with s.put(f"{url}/v1/agents/{agent_id}", json=patch) as r:
                if r.status != 200:
                    raise SystemExit(f"--agent refused: {await r.text()}")
    return agent_id


def _audio(text: str, phone: bool) -> tuple[bytes, float]:
    """The caller's audio for ``text`` and where its speech ends (seconds)."""
    from pipelines.audio import mulaw_to_pcm16
    from tests.support.speech import speech

    if phone:
        law = speech(text, rate=8000, encoding="u-law", bits=8)
        return law, speech_end_s(mulaw_to_pcm16(law), 8000)
    pcm = speech(text)
    return pcm, speech_end_s(pcm, 16000)


async def _one_call(
    url: str, key: str, agent_id: str, turns: int, phone: bool
) -> list[dict[str, Any]]:
    from tests.support.stream_client import Received, StreamCaller

    rows: list[dict[str, Any]] = []
    ws_url = url.replace("http", "ws") + "/v1/stream"
    async with StreamCaller(
        ws_url, key, agent_id, sample_rate=8000 if phone else 16000,
        encoding="mulaw" if phone else "pcm16",
    ) as caller:
        sent = _SentClock()
        caller._pending = sent
        await caller.wait_event("agent.speech_stopped", 30, turn_id=1)
        for i in range(turns):
            audio, end_s = _audio(QUESTIONS[i % len(QUESTIONS)], phone)
            queued = len(sent)
            caller.say(audio)
            sent.watch = sent[queued]
            seen = len(caller.log)
            metrics = await caller.wait_for(
                lambda r: (
                    r.kind == "event"
                    and r.data["event"]["type"] == "turn.metrics"
                    and r.data["event"]["data"]["turn_id"] > 1 + len(rows)
                ),
                60,
            )
            assert sent.sent_at is not None
            true_end = sent.sent_at - FRAME_S + end_s
            data = metrics.data["event"]["data"]
            first_audio = await caller.wait_for(
                lambda r, t=true_end: r.kind == "audio" and r.at > t, 30
            )
            row: dict[str, Any] = dict(data["durations_ms"])
            marks = data["marks"]
            # the worker's clock origin on ours: its first frame arrives within ~1 ms
            t0 = first_audio.at - marks["first_audio_out"]
            stopped: list[Received] = [
                r
                for r in caller.log[seen:]
                if r.kind == "event" and r.data["event"]["type"] == "user.speech_stopped"
            ]
            # the decision that closed this turn: the stop whose time is its speech end
            decision = min(
                stopped,
                key=lambda r: abs(r.data["event"]["data"]["t"] - marks["speech_ended"]),
                default=None,
            )

            def ms(a: float | None, b: float | None) -> float | None:
                return None if a is None or b is None else round((b - a) * 1000, 1)

            vad_end = t0 + marks["speech_ended"]
            decided = decision.at if decision is not None else None
            final = t0 + marks["final_transcript"] if marks["final_transcript"] else None
            row["vad_end_error"] = ms(true_end, vad_end)
            row["vad_decision"] = ms(vad_end, decided)
            row["stt_finalize"] = ms(decided, final)
            row["min_delay_hold"] = ms(final, t0 + marks["endpoint"])
            row["caller_voice_to_voice"] = ms(true_end, first_audio.at)
            row["turn_id"] = data["turn_id"]
            rows.append(row)
            await caller.wait_event("agent.speech_stopped", 60, turn_id=data["turn_id"])
            await asyncio.sleep(0.3)
    return rows


async def run(
    calls: int, turns: int, *, phone: bool = False, agent: dict[str, Any] | None = None
) -> dict[str, Any]:
    from runtime.server import Worker
    from runtime.settings import WorkerSettings

    with tempfile.TemporaryDirectory() as tmp:
        worker = Worker(
            WorkerSettings(host="127.0.0.1", port=0, data_dir=Path(tmp)), embedded_api=True
        )
        await worker.start()
        try:
            agent_id = await _agent_id(worker.url, worker.api_key, agent)
            rows: list[dict[str, Any]] = []
            for call in range(calls):
                call_rows = await _one_call(worker.url, worker.api_key, agent_id, turns, phone)
                for i, row in enumerate(call_rows):
                    row["call"] = call + 1
                    row["first_utterance_of_process"] = call == 0 and i == 0
                rows += call_rows
        finally:
            await worker.stop(drain_timeout=5)
    summary: dict[str, Any] = {}
    labels = ("turn_id", "call", "first_utterance_of_process")
    for key in [k for k in rows[0] if k not in labels] if rows else []:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        summary[key] = {
            "n": len(values),
            "median_ms": round(statistics.median(values), 1) if values else None,
            "p95_ms": round(percentile(values, 0.95), 1) if values else None,
        }
    return {"turns": len(rows), "stages": summary, "raw": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write raw numbers here")
    parser.add_argument("--phone", action="store_true", help="call as μ-law 8 kHz audio")
    parser.add_argument("--agent", type=json.loads, help="JSON merge patch for the agent")
    parser.add_argument("--verbose", action="store_true", help="print every turn")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.calls, args.turns, phone=args.phone, agent=args.agent))
    print(f"offline loop: {result['turns']} turns" + (" (μ-law 8 kHz)" if args.phone else ""))
    print(f"{'stage':<24}{'n':>4}{'median ms':>12}{'p95 ms':>10}")
    for stage, s in result["stages"].items():
        print(f"{stage:<24}{s['n']:>4}{s['median_ms']!s:>12}{s['p95_ms']!s:>10}")
    if args.verbose:
        stages = list(result["stages"])
        print("\n" + "call turn " + " ".join(f"{s[:14]:>14}" for s in stages))
        for row in result["raw"]:
            cells = " ".join(f"{row.get(s)!s:>14}" for s in stages)
            first = row["first_utterance_of_process"]
            note = "  <- first utterance of the process" if first else ""
            print(f"{row['call']:>4} {row['turn_id']:>4} {cells}{note}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
