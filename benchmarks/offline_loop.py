"""Per-turn latency marks of the offline loop (pocketsphinx → playbook → espeak-ng).

Runs the real worker in-process with the embedded API, places calls over the local
WebSocket with espeak-ng speech sent in real time, and prints the median and p95 of each
stage of every turn: end of speech → endpoint → final transcript → LLM first token → TTS
first audio → first audio out (on the worker) and first audio received (by the caller).

    python -m benchmarks.offline_loop --calls 3 --turns 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

QUESTIONS = (
    "what time does the store open tomorrow",
    "where are you located",
    "i would like to book a table for two",
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def _agent_id(url: str, key: str) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{url}/v1/agents", headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        return str((await r.json())["agents"][0]["id"])


async def _one_call(url: str, key: str, agent_id: str, turns: int) -> list[dict[str, Any]]:
    from tests.support.speech import speech
    from tests.support.stream_client import StreamCaller

    rows: list[dict[str, Any]] = []
    ws_url = url.replace("http", "ws") + "/v1/stream"
    async with StreamCaller(ws_url, key, agent_id) as caller:
        await caller.wait_event("agent.speech_stopped", 30, turn_id=1)
        for i in range(turns):
            audio = speech(QUESTIONS[i % len(QUESTIONS)])
            said_at = time.monotonic()
            duration = caller.say(audio)
            speech_end = said_at + duration
            metrics = await caller.wait_for(
                lambda r: (
                    r.kind == "event"
                    and r.data["event"]["type"] == "turn.metrics"
                    and r.data["event"]["data"]["turn_id"] > 1 + len(rows)
                ),
                60,
            )
            data = metrics.data["event"]["data"]
            first_audio = await caller.wait_for(
                lambda r, t=speech_end: r.kind == "audio" and r.at > t, 30
            )
            row = dict(data["durations_ms"])
            row["caller_voice_to_voice"] = round((first_audio.at - speech_end) * 1000, 1)
            rows.append(row)
            await caller.wait_event("agent.speech_stopped", 60, turn_id=data["turn_id"])
            await asyncio.sleep(0.3)
    return rows


async def run(calls: int, turns: int) -> dict[str, Any]:
    from runtime.server import Worker
    from runtime.settings import WorkerSettings

    with tempfile.TemporaryDirectory() as tmp:
        worker = Worker(
            WorkerSettings(host="127.0.0.1", port=0, data_dir=Path(tmp)), embedded_api=True
        )
        await worker.start()
        try:
            agent_id = await _agent_id(worker.url, worker.api_key)
            rows: list[dict[str, Any]] = []
            for _ in range(calls):
                rows += await _one_call(worker.url, worker.api_key, agent_id, turns)
        finally:
            await worker.stop(drain_timeout=5)
    summary: dict[str, Any] = {}
    for key in rows[0] if rows else []:
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
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.calls, args.turns))
    print(f"offline loop: {result['turns']} turns")
    print(f"{'stage':<24}{'n':>4}{'median ms':>12}{'p95 ms':>10}")
    for stage, s in result["stages"].items():
        print(f"{stage:<24}{s['n']:>4}{s['median_ms']!s:>12}{s['p95_ms']!s:>10}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
