"""Latency of the offline engines on their own, and how long they stall the event loop.

- pocketsphinx: decoding-process start-up (model load), and the finalize latency (from
  ``finalize()`` to the ``final`` event) after speech pushed in real time, 20 ms frames,
  the way the pipeline feeds it. The first utterance of the process is reported apart:
  it is decoded twice (no cepstral mean known yet, see providers/offline/_sphinx_host.py).
- espeak-ng: time to first audio (``synthesize()`` → first chunk) and real-time factor
  (synthesis wall time / audio duration) per sentence.
- the event loop's worst lateness (a 5 ms ticker) while each engine works.

    python -m benchmarks.offline_engines [--reps 3] [--concurrent 4] [--no-second-pass]

Speech comes from the espeak-ng CLI and sox (scripts/setup/apt.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

from benchmarks.stats import percentile
from providers.base import PCM16_16K, SttStream
from providers.offline import pocketsphinx_stt
from providers.offline.espeak_tts import EspeakTts
from providers.offline.pocketsphinx_stt import PocketsphinxStt

SENTENCES = (
    "what time does the store open tomorrow",
    "where can i find the address",
    "i would like to book a table for two",
    "thank you goodbye",
    "can you tell me your opening hours",
)
REPLIES = (
    "Hello! Thanks for calling. How can I help you today?",
    "We open at nine in the morning tomorrow, and we close at six in the evening.",
    "We are at twelve Main Street, next to the library.",
    "You're welcome. Goodbye!",
)
FRAME = PCM16_16K.frame_bytes(20)



def report(label: str, values: list[float], unit: str = "ms", scale: float = 1000.0) -> None:
    if not values:
        print(f"  {label:<44} (no samples)")
        return
    digits = 2 if unit else 5
    median, p95 = statistics.median(values) * scale, percentile(values, 0.95) * scale
    print(f"  {label:<44} median {median:8.{digits}f} {unit:2}"
          f"   p95 {p95:8.{digits}f} {unit:2}   n={len(values)}")


class LoopLag:
    """Lateness of a 5 ms ticker: how long something held the event loop.

    On a shared 2-core machine the worst value includes the OS descheduling this
    process; the p99 is the steadier figure.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def worst(self) -> float:
        return max(self.samples, default=0.0)

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        return (f"p99 {percentile(self.samples, 0.99) * 1000:6.2f} ms, "
                f"worst {self.worst * 1000:6.2f} ms")

    async def _tick(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            self.samples.append(max(0.0, time.perf_counter() - start - 0.005))

    @contextmanager
    def measuring(self) -> Iterator[LoopLag]:
        self.samples = []
        self._task = asyncio.get_running_loop().create_task(self._tick())
        try:
            yield self
        finally:
            self._task.cancel()


async def speak_in_real_time(stream: SttStream, pcm: bytes) -> None:
    """20 ms frames at the pace of a caller (drift-corrected)."""
    start = time.perf_counter()
    for n, i in enumerate(range(0, len(pcm), FRAME)):
        await stream.push(pcm[i : i + FRAME])
        delay = start + (n + 1) * 0.02 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


async def one_utterance(stream: SttStream, pcm: bytes) -> tuple[float, str]:
    events = stream.events()
    await speak_in_real_time(stream, pcm)
    t0 = time.perf_counter()
    await stream.finalize()
    async for event in events:
        if event.kind == "final":
            return time.perf_counter() - t0, event.text
    raise RuntimeError("no final")


async def bench_stt(reps: int, concurrent: int, second_pass: bool) -> None:
    from tests.support.speech import speech

    audio = {s: speech(s) for s in SENTENCES}
    provider = PocketsphinxStt(options={} if second_pass else {"fwdflat": False})
    t0 = time.perf_counter()
    load_s = await provider.prewarm()
    startup = time.perf_counter() - t0
    print("pocketsphinx" + ("" if second_pass else " (fwdflat: false)"))
    print(f"  decoding process start-up                    {startup * 1000:8.1f} ms"
          f" (model load {load_s * 1000:.1f} ms)")

    lag = LoopLag()
    stream = await provider.open(PCM16_16K, language="en")
    first, text = await one_utterance(stream, audio[SENTENCES[0]])
    print(f"  first utterance of the process (2 passes)    {first * 1000:8.1f} ms  -> {text!r}")
    latencies: list[float] = []
    with lag.measuring():
        for _ in range(reps):
            for sentence in SENTENCES:
                latency, text = await one_utterance(stream, audio[sentence])
                latencies.append(latency)
                if _ == 0:
                    print(f"    {sentence!r:44} -> {text!r}")
    await stream.aclose()
    report("finalize -> final, one caller", latencies)
    print(f"  event-loop lateness meanwhile                {lag.summary()}")

    if concurrent > 1:
        t0 = time.perf_counter()
        await provider.prewarm(decoders=concurrent)
        print(f"  growing the pool to {concurrent} decoders"
              f"{' ' * 20}{(time.perf_counter() - t0) * 1000:8.1f} ms")
        streams = [await provider.open(PCM16_16K, language="en") for _ in range(concurrent)]
        together: list[float] = []

        async def caller(i: int, s: SttStream) -> None:
            for r in range(reps):
                sentence = SENTENCES[(i + r) % len(SENTENCES)]
                latency, _ = await one_utterance(s, audio[sentence])
                together.append(latency)

        with lag.measuring():
            await asyncio.gather(*(caller(i, s) for i, s in enumerate(streams)))
        for s in streams:
            await s.aclose()
        report(f"finalize -> final, {concurrent} callers at once", together)
        print(f"  event-loop lateness meanwhile                {lag.summary()}")
    pocketsphinx_stt.shutdown()


async def bench_tts(reps: int, concurrent: int) -> None:
    provider = EspeakTts()
    t0 = time.perf_counter()
    rate = await provider.warm()
    print("espeak-ng")
    print(f"  library load + initialize                    {(time.perf_counter() - t0) * 1000:8.1f}"
          f" ms ({rate} Hz)")
    stream = await provider.open(PCM16_16K, voice=None, language="en")
    ttfa: list[float] = []
    rtf: list[float] = []
    lag = LoopLag()
    with lag.measuring():
        for _ in range(reps):
            for text in REPLIES:
                start = time.perf_counter()
                first = None
                samples = 0
                async for chunk in stream.synthesize(text):
                    if first is None:
                        first = time.perf_counter() - start
                    samples += len(chunk) // 2
                wall = time.perf_counter() - start
                assert first is not None
                ttfa.append(first)
                rtf.append(wall / (samples / stream.output_format.sample_rate))
    report("time to first audio", ttfa)
    report("real-time factor (wall / audio)", rtf, unit="", scale=1.0)
    print(f"  event-loop lateness meanwhile                {lag.summary()}")

    if concurrent > 1:
        streams = [await provider.open(PCM16_16K, voice=None, language="en")
                   for _ in range(concurrent)]
        together: list[float] = []

        async def speaker(s: object) -> None:
            assert isinstance(s, type(stream))
            for text in REPLIES:
                start = time.perf_counter()
                async for _ in s.synthesize(text):
                    together.append(time.perf_counter() - start)
                    break

        await asyncio.gather(*(speaker(s) for s in streams))
        report(f"time to first audio, {concurrent} streams at once", together)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--no-second-pass", action="store_true",
                        help="pocketsphinx option fwdflat: false (faster finalize, fewer words)")
    parser.add_argument("--only", choices=("stt", "tts"))
    args = parser.parse_args()
    if args.only != "stt":
        await bench_tts(args.reps * 4, args.concurrent)
    if args.only != "tts":
        await bench_stt(args.reps, args.concurrent, not args.no_second_pass)


if __name__ == "__main__":
    asyncio.run(main())
