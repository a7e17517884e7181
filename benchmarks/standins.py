"""The provider stand-ins of known delay, as a process of their own.

Deepgram (live STT and Aura TTS), and an OpenAI-compatible chat API, from tests/fakes:
they speak the vendors' wire protocols on 127.0.0.1, so the worker and Pipecat use their
real SDK clients against them. Their delays are the knobs of the latency budget:

- STT: the final transcript comes ``stt_delay`` after the client's ``Finalize`` (both
  stacks send it at their VAD's end of speech; the stand-in's own endpointing is off);
- LLM: the whole reply comes ``llm_delay`` after the request (one burst, so no sentence
  aggregation difference between the stacks ends up in the figures);
- TTS: the audio comes ``tts_delay`` after ``Flush``, faster than real time.

    python -m benchmarks.standins --stt-delay 0.1 --llm-delay 0.2 --tts-delay 0.1

prints one JSON line with the base URLs, then serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from dataclasses import asdict, dataclass
from typing import Any

REPLY = (
    "We open at nine tomorrow morning and we close at six in the evening, "
    "is there anything else I can help you with today?"
)
#: what the caller "says", one scripted sentence per utterance (the stand-in hears a word
#: for every ``word_ms`` of speech energy, so the text only needs enough words)
UTTERANCE = "what time does the store open tomorrow morning please tell me"


@dataclass(frozen=True)
class Delays:
    stt: float = 0.1
    llm: float = 0.2
    tts: float = 0.1
    char_ms: int = 25  # agent audio per reply character (TTS stand-in)

    @property
    def total(self) -> float:
        return self.stt + self.llm + self.tts


async def serve(delays: Delays, ready: asyncio.Future[dict[str, Any]] | None = None,
                stop: asyncio.Event | None = None) -> None:
    from tests.fakes.deepgram_server import FakeDeepgramServer
    from tests.fakes.openai_server import FakeOpenAIServer

    deepgram = FakeDeepgramServer(
        utterances=[UTTERANCE] * 10_000,
        word_ms=250,  # the first interim word after 125 ms of speech
        delay=delays.stt,
        tts_delay=delays.tts,
        char_ms=delays.char_ms,
    )
    openai = FakeOpenAIServer(reply=REPLY, delay=delays.llm)
    async with deepgram, openai:
        urls: dict[str, Any] = {"deepgram": deepgram.base_url,
                                "openai": openai.openai_base_url, "delays": asdict(delays)}
        if ready is not None:
            ready.set_result(urls)
        else:
            print(json.dumps(urls), flush=True)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready is None:
            loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1)
                            else None)
        while not stop.is_set():
            # the fakes keep every request for tests; a long benchmark does not need them
            for fake in (deepgram, openai):
                fake.requests.clear()
            deepgram.stats.clear()
            deepgram.speak_texts.clear()
            try:
                await asyncio.wait_for(stop.wait(), 5.0)
            except TimeoutError:
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stt-delay", type=float, default=Delays.stt)
    parser.add_argument("--llm-delay", type=float, default=Delays.llm)
    parser.add_argument("--tts-delay", type=float, default=Delays.tts)
    parser.add_argument("--char-ms", type=int, default=Delays.char_ms)
    args = parser.parse_args(argv)
    delays = Delays(args.stt_delay, args.llm_delay, args.tts_delay, args.char_ms)
    try:
        import uvloop

        uvloop.run(serve(delays))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(delays))
    return 0


if __name__ == "__main__":
    sys.exit(main())


async def calibrate(urls: dict[str, Any], rounds: int = 15) -> dict[str, float]:
    """The stand-ins' own latency beyond their configured delays, seen by a bare client
    (raw aiohttp, no SDK), median of ``rounds`` requests each: the floor that belongs to
    "provider delay", not to the runtime being measured."""
    import statistics
    import time

    import aiohttp
    import numpy as np

    from tests.fakes._base import pcm16_to_mulaw, tone

    delays = urls["delays"]
    speech = pcm16_to_mulaw(np.frombuffer(tone(600, 8000, amplitude=8000), dtype="<i2"))
    ws_base = urls["deepgram"].replace("http", "ws", 1)
    out: dict[str, list[float]] = {"stt": [], "llm": [], "tts": []}
    headers = {"Authorization": "Token bench"}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            f"{ws_base}/v1/listen?encoding=mulaw&sample_rate=8000&endpointing=false"
            "&interim_results=false", headers=headers) as ws:
            for _ in range(rounds):
                for i in range(0, len(speech), 160):
                    await ws.send_bytes(speech[i:i + 160])
                t0 = time.perf_counter()
                await ws.send_str(json.dumps({"type": "Finalize"}))
                while True:
                    msg = await ws.receive()
                    if msg.type.name == "TEXT" and json.loads(msg.data).get("is_final"):
                        break
                out["stt"].append(time.perf_counter() - t0 - delays["stt"])
        body = {"model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": "hello"}]}
        for _ in range(rounds):
            t0 = time.perf_counter()
            async with session.post(f"{urls['openai']}/chat/completions", json=body,
                                    headers={"Authorization": "Bearer bench"}) as resp:
                async for line in resp.content:
                    if b'"content":"' in line and b'"content":""' not in line:
                        out["llm"].append(time.perf_counter() - t0 - delays["llm"])
                        break
                await resp.read()
        async with session.ws_connect(
            f"{ws_base}/v1/speak?model=aura-2-thalia-en&encoding=mulaw&sample_rate=8000",
            headers=headers) as ws:
            for _ in range(rounds):
                t0 = time.perf_counter()
                await ws.send_str(json.dumps({"type": "Speak", "text": REPLY}))
                await ws.send_str(json.dumps({"type": "Flush"}))
                first = None
                while True:
                    msg = await ws.receive()
                    if msg.type.name == "BINARY" and first is None:
                        first = time.perf_counter() - t0 - delays["tts"]
                    elif msg.type.name == "TEXT" and json.loads(msg.data).get("type") == "Flushed":
                        break
                assert first is not None
                out["tts"].append(first)
    return {k: round(statistics.median(v) * 1000, 2) for k, v in out.items()}
