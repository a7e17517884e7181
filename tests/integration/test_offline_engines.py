"""The real offline engines: pocketsphinx on espeak-ng speech, espeak-ng from the wheel.

Speech for recognition comes from the espeak-ng CLI and sox (tests/support/speech.py,
installed by scripts/setup/apt.sh). pocketsphinx's accuracy on synthetic speech
is moderate, so assertions look for robust keywords, not whole sentences.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import soxr

from providers.base import (
    PCM16_16K,
    AudioFormat,
    ConfigError,
    ProviderError,
    SttEvent,
    SttStream,
    TtsStream,
)
from providers.offline import _sphinx_host as host_wire
from providers.offline import pocketsphinx_stt
from providers.offline.espeak_tts import EspeakTts, engine_stats
from providers.offline.pocketsphinx_stt import PocketsphinxStt
from tests.support.speech import speech

pytestmark = pytest.mark.timeout(120)

FRAME = PCM16_16K.frame_bytes(20)
ESPEAK_FORMAT = AudioFormat("pcm16", 22050)


@pytest.fixture(scope="module", autouse=True)
def _stop_decoders() -> Iterator[None]:
    yield
    pocketsphinx_stt.shutdown()


@pytest.fixture
async def stt_stream() -> AsyncIterator[SttStream]:
    stream = await PocketsphinxStt().open(PCM16_16K, language="en")
    try:
        yield stream
    finally:
        await stream.aclose()


async def say(stream: SttStream, pcm: bytes, frame: int = FRAME) -> None:
    """Push like the pipeline does: 20 ms frames while the user speaks, then finalize."""
    for i in range(0, len(pcm), frame):
        await stream.push(pcm[i : i + frame])
    await stream.finalize()


async def until_final(events: AsyncIterator[SttEvent]) -> tuple[list[SttEvent], SttEvent]:
    partials: list[SttEvent] = []
    async for event in events:
        if event.kind == "final":
            return partials, event
        partials.append(event)
    raise AssertionError("the stream ended without a final")


def words(text: str) -> set[str]:
    return set(text.lower().split())


def to_16k(pcm: bytes, rate: int) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2")
    out: np.ndarray = soxr.resample(samples, rate, 16000)
    return out.astype("<i2").tobytes()


async def synth(stream: TtsStream, text: str) -> bytes:
    return b"".join([chunk async for chunk in stream.synthesize(text)])


def long_term_spectrum(pcm: bytes, size: int = 512) -> np.ndarray:
    """Average power spectrum in dB: blind to small timing drift, not to voice or pitch."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n = len(x) // size
    frames = x[: n * size].reshape(n, size) * np.hanning(size)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    spectrum: np.ndarray = 10 * np.log10(power.mean(axis=0) + 1e-9)
    return spectrum


def spectral_distance(a: bytes, b: bytes) -> float:
    """RMS difference of the long-term spectra (dB); length differences count too."""
    length_penalty = 100.0 * abs(len(a) - len(b)) / max(len(a), len(b), 1)
    spectra = long_term_spectrum(a) - long_term_spectrum(b)
    return float(np.sqrt(np.mean(spectra**2))) + length_penalty


# --------------------------------------------------------------------------- pocketsphinx


async def test_recognises_speech_with_partials_then_one_final(stt_stream: SttStream) -> None:
    events = stt_stream.events()
    await say(stt_stream, speech("what are your opening hours tomorrow"))
    partials, final = await until_final(events)
    assert words(final.text) & {"open", "opening", "hours", "tomorrow"}, final.text
    assert final.speech_final
    assert partials and all(p.kind == "partial" and p.text for p in partials)
    texts = [p.text for p in partials]
    assert all(a != b for a, b in itertools.pairwise(texts)), "only changed partials"


async def test_the_stream_serves_utterance_after_utterance(stt_stream: SttStream) -> None:
    events = stt_stream.events()
    await say(stt_stream, speech("where can i find the address"))
    _, first = await until_final(events)
    await say(stt_stream, speech("i would like to book a table for two"))
    _, second = await until_final(events)
    # recognition of synthetic speech varies with the decoder's history: robust words only
    assert words(first.text) & {"where", "find", "address"}, first.text
    assert words(second.text) & {"book", "like", "two", "table"}, second.text
    assert not words(second.text) & {"where", "find", "address"}, second.text


async def test_finalize_without_speech_gives_an_empty_final(stt_stream: SttStream) -> None:
    events = stt_stream.events()
    await stt_stream.finalize()
    _, final = await until_final(events)
    assert final.text == ""


async def test_odd_sized_chunks_are_reassembled(stt_stream: SttStream) -> None:
    events = stt_stream.events()
    await say(stt_stream, speech("where can i find the address"), frame=333)
    _, final = await until_final(events)
    assert words(final.text) & {"where", "find", "address"}, final.text


async def test_concurrent_streams_do_not_mix_their_words() -> None:
    provider = PocketsphinxStt()
    sentences = {
        "where can i find the address": {"address"},
        "i would like to book a table for two": {"book", "like", "two", "table"},
        "what are your opening hours tomorrow": {"open", "opening", "hours", "tomorrow"},
    }
    load_s = await provider.prewarm(decoders=len(sentences))  # no model load mid-call
    assert load_s > 0
    streams = [await provider.open(PCM16_16K, language="en-us") for _ in sentences]

    async def one(stream: SttStream, text: str) -> str:
        events = stream.events()
        await say(stream, speech(text))
        _, final = await until_final(events)
        await stream.aclose()
        return final.text

    results = await asyncio.gather(*(one(s, t) for s, t in zip(streams, sentences, strict=True)))
    for (sentence, keys), heard in zip(sentences.items(), results, strict=True):
        assert words(heard) & keys, (sentence, heard)
    assert "address" not in words(results[1]) | words(results[2])


def decode_in_chunks(host: host_wire._Host, audio: bytes, chunk: int) -> str:
    """One utterance through the decoding process's own logic, cut into ``chunk`` bytes
    (whole samples: the parent sends nothing else)."""
    host.handle(host_wire.OP_OPEN, 1, b"")
    for i in range(0, len(audio), chunk):
        host.handle(host_wire.OP_AUDIO, 1, audio[i : i + chunk])
    reply = host.handle(host_wire.OP_FINALIZE, 1, b"")
    host.handle(host_wire.OP_CLOSE, 1, b"")
    assert reply is not None
    op, _, body = host_wire.unpack(reply)
    assert op == host_wire.OP_FINAL, body
    return str(json.loads(body)["text"])


def test_the_words_do_not_depend_on_how_the_audio_was_cut() -> None:
    # digital silence around the words, as a WebSocket caller sends it; the first
    # utterance of a process restarts with its own cepstral mean part-way through
    audio = bytes(3200) + speech("are you open tomorrow") + bytes(6400)
    hosts = [host_wire._Host({}, 200) for _ in range(2)]
    first = [decode_in_chunks(h, audio, chunk) for h, chunk in zip(hosts, (640, 9600), strict=True)]
    assert first[0] == first[1], first
    assert words(first[0]) & {"open", "opening", "hours", "tomorrow"}, first[0]
    second = [
        decode_in_chunks(h, audio, chunk) for h, chunk in zip(hosts, (1920, 334), strict=True)
    ]
    assert second[0] == second[1], second


async def test_events_end_after_aclose(stt_stream: SttStream) -> None:
    events = stt_stream.events()
    await stt_stream.push(speech("hello")[: FRAME * 10])
    await stt_stream.aclose()
    remaining = [e async for e in events]
    assert all(e.kind == "partial" for e in remaining)
    await stt_stream.push(b"\0" * FRAME)  # pushing after close is ignored
    await stt_stream.aclose()  # idempotent


async def test_refuses_other_languages_and_formats() -> None:
    provider = PocketsphinxStt()
    with pytest.raises(ConfigError, match="English"):
        await provider.open(PCM16_16K, language="de")
    with pytest.raises(ConfigError):
        await provider.open(AudioFormat("mulaw", 8000), language="en")


async def test_a_crashed_decoder_process_is_reported_and_replaced() -> None:
    provider = PocketsphinxStt()
    stream = await provider.open(PCM16_16K, language="en")
    events = stream.events()
    os.kill(stream.host_pid, signal.SIGKILL)
    with pytest.raises(ProviderError, match="decoding process"):
        await until_final(events)
    await stream.aclose()

    fresh = await provider.open(PCM16_16K, language="en")
    try:
        fresh_events = fresh.events()
        await say(fresh, speech("where can i find the address"))
        _, final = await until_final(fresh_events)
        assert "address" in words(final.text)
    finally:
        await fresh.aclose()


# --------------------------------------------------------------------------- espeak-ng


@pytest.fixture
async def tts_stream() -> AsyncIterator[TtsStream]:
    stream = await EspeakTts().open(PCM16_16K, voice=None, language="en")
    try:
        yield stream
    finally:
        await stream.aclose()


async def test_speaks_a_sentence_in_its_native_format(tts_stream: TtsStream) -> None:
    assert tts_stream.output_format == ESPEAK_FORMAT
    assert EspeakTts().output_formats() == (ESPEAK_FORMAT,)
    chunks = [c async for c in tts_stream.synthesize("We open at nine in the morning tomorrow.")]
    assert len(chunks) > 1, "audio is streamed as it is produced"
    audio = np.frombuffer(b"".join(chunks), dtype="<i2")
    seconds = len(audio) / ESPEAK_FORMAT.sample_rate
    assert 1.0 < seconds < 6.0, seconds
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    assert rms > 300, "not silence"


async def test_empty_text_gives_no_audio(tts_stream: TtsStream) -> None:
    assert await synth(tts_stream, "   ") == b""


async def test_round_trip_through_pocketsphinx(tts_stream: TtsStream) -> None:
    audio = await synth(tts_stream, "Where can I find the address?")
    stream = await PocketsphinxStt().open(PCM16_16K, language="en")
    try:
        events = stream.events()
        await say(stream, to_16k(audio, ESPEAK_FORMAT.sample_rate))
        _, final = await until_final(events)
    finally:
        await stream.aclose()
    assert "address" in words(final.text), final.text


async def test_ten_concurrent_streams_each_get_their_own_audio() -> None:
    front_desk = "Good morning, this is the front desk."
    setups = [
        ("en-us", {}, front_desk),
        ("en-us", {"pitch": 70}, front_desk),
        ("en-us", {"volume": 60}, front_desk),
        ("de", {}, "Guten Tag, wie kann ich helfen?"),
        ("fr", {"pitch": 20}, "Bonjour, comment puis-je vous aider?"),
        ("en-us+f3", {}, "Your order has shipped."),
        ("es", {"rate": 120}, "Buenos dias, en que puedo ayudarle?"),
        ("en", {"rate": 240}, "Twelve Main Street, next to the library."),
        ("it", {}, "Buongiorno, come posso aiutarla?"),
        ("en-us", {"rate": 300}, "Thank you for calling, goodbye."),
    ]

    async def open_one(voice: str, options: dict[str, int]) -> TtsStream:
        return await EspeakTts(options=options).open(PCM16_16K, voice=voice, language="en")

    serial = []
    for voice, options, text in setups:
        serial.append(await synth(await open_one(voice, options), text))
    streams = [await open_one(v, o) for v, o, _ in setups]
    concurrent = await asyncio.gather(
        *(synth(s, text) for s, (_, _, text) in zip(streams, setups, strict=True))
    )
    for i, (voice, _, text) in enumerate(setups):
        # each concurrent rendering is closest to its own serial rendering, of nearly the
        # same length (a lost or misrouted 60 ms chunk breaks both)
        distances = [spectral_distance(concurrent[i], other) for other in serial]
        assert min(range(len(setups)), key=distances.__getitem__) == i, (voice, text, distances)
        assert abs(len(concurrent[i]) - len(serial[i])) <= 0.01 * len(serial[i]), (voice, text)


async def test_cancelling_stops_the_synthesis(tts_stream: TtsStream) -> None:
    sentence = "This is one sentence of a very long announcement that nobody wants to hear. "
    long_text = sentence * 150  # about 13 minutes of speech
    full_samples = 13 * 60 * ESPEAK_FORMAT.sample_rate
    before = engine_stats()
    first_chunk = asyncio.Event()
    received: list[bytes] = []

    async def consume() -> None:
        async for chunk in tts_stream.synthesize(long_text):
            received.append(chunk)
            first_chunk.set()

    task = asyncio.create_task(consume())
    await first_chunk.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # the engine is serial: this sentence is spoken only after the long one was abandoned
    after_text = "Still here."
    other = await EspeakTts().open(PCM16_16K, voice=None, language="en")
    short = await synth(other, after_text)
    after = engine_stats()
    assert short, "the engine keeps working after a cancellation"
    assert after["aborted"] == before["aborted"] + 1
    produced = after["samples"] - before["samples"] - len(short) // 2
    assert produced < full_samples // 10, f"{produced} samples after cancel"


async def test_voices_follow_the_language_or_the_choice() -> None:
    german = await EspeakTts().open(PCM16_16K, voice=None, language="de")
    assert german.voice == "de"
    english = await EspeakTts(voice="en-us").open(PCM16_16K, voice=None, language="en")
    assert english.voice == "en-us"
    with pytest.raises(ConfigError, match="no voice"):
        await EspeakTts().open(PCM16_16K, voice="xx-nonexistent", language="en")


async def test_uses_the_library_inside_the_wheel(tts_stream: TtsStream) -> None:
    await synth(tts_stream, "Hello.")
    maps = await asyncio.to_thread(Path("/proc/self/maps").read_text)
    libraries = {line.split()[-1] for line in maps.splitlines() if "espeak" in line}
    assert any("espeakng_loader" in path for path in libraries), libraries
    assert all("espeakng_loader" in path for path in libraries), libraries
