"""A local stand-in for Deepgram's live STT (``/v1/listen``) and Aura TTS (``/v1/speak``).

It speaks the WebSocket protocol the ``deepgram-sdk`` expects (see docs/providers.md for
what was checked against Deepgram's documentation): ``Token`` auth on the upgrade,
query parameters for the stream, binary audio in, JSON ``Results`` / ``SpeechStarted`` /
``UtteranceEnd`` / ``Metadata`` out, and the ``KeepAlive`` / ``Finalize`` /
``CloseStream`` control messages.

Recognition is scripted and deterministic: ``utterances`` are the sentences "spoken"; a
word is heard for every ``word_ms`` of speech audio received (anything above an energy
floor counts as speech, in ``linear16``, ``mulaw`` or ``alaw`` at the stream's rate).
Losing audio therefore loses words, which is what the failover tests check.

Usage (also from a benchmark script)::

    async with FakeDeepgramServer(utterances=["hello there"], delay=0.2) as srv:
        client = AsyncDeepgramClient(api_key="k", environment=srv.environment())
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes._base import FakeServer, Faults, Recorded, abort, dumps, pcm16_to_mulaw, to_pcm16

SPEECH_RMS = 300.0
_MODEL_INFO = {"name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3"}


@dataclass
class ListenStats:
    """Per-connection counters the tests read."""

    keepalives: int = 0
    finalizes: int = 0
    closed_by_client: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)


class FakeDeepgramServer(FakeServer):
    """Knobs (all mutable at runtime):

    ``delay``: seconds between an endpoint (``Finalize`` or endpointing silence) and the
    final ``Results`` — the STT final delay; ``first_byte_delay``: seconds before the
    first message of a connection; ``drop_after_ms``: cut the connection (no close
    frame) after that much audio was received; ``idle_timeout``: close with 1011 like
    Deepgram (``NET-0001``) when neither audio nor KeepAlive arrives for that long;
    ``tts_delay``: Aura first-byte delay; ``tts_drop_after_bytes``: cut an Aura stream
    after that many audio bytes; ``char_ms``: Aura audio per character.
    """

    def __init__(
        self,
        *,
        utterances: Sequence[str] = ("hello world",),
        word_ms: int = 200,
        delay: float = 0.0,
        first_byte_delay: float = 0.0,
        drop_after_ms: float | None = None,
        idle_timeout: float | None = None,
        tts_delay: float = 0.0,
        tts_drop_after_bytes: int | None = None,
        char_ms: int = 10,
        api_key: str | None = None,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(api_key=api_key, faults=faults)
        self.utterances = list(utterances)
        self.word_ms = word_ms
        self.delay = delay
        self.first_byte_delay = first_byte_delay
        self.drop_after_ms = drop_after_ms
        self.idle_timeout = idle_timeout
        self.tts_delay = tts_delay
        self.tts_drop_after_bytes = tts_drop_after_bytes
        self.char_ms = char_ms
        self.stats: list[ListenStats] = []
        self.speak_texts: list[str] = []

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._listen)
        app.router.add_get("/v1/speak", self._speak)

    def environment(self) -> Any:
        """A ``DeepgramClientEnvironment`` pointing the SDK here."""
        from deepgram.environment import DeepgramClientEnvironment

        return DeepgramClientEnvironment(
            base=self.base_url,
            production=self.ws_url,
            agent=self.ws_url,
            agent_rest=self.base_url,
        )

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        # Deepgram's REST error shape
        return {
            "err_code": self.faults.error_code or ("RATE_LIMIT" if status == 429 else "ERROR"),
            "err_msg": message,
            "request_id": str(uuid.uuid4()),
        }

    def _check(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None:
            if request.headers.get("Authorization") != f"Token {self.api_key}":
                return web.json_response(
                    {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}, status=401
                )
        status = self.faults.take_failure()
        if status is not None:
            return self._refusal(status, "fake deepgram refused the request")
        return None

    # ------------------------------------------------------------------ /v1/listen

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(request)  # refused upgrades are recorded too
        refusal = self._check(request)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        stats = ListenStats()
        self.stats.append(stats)
        session = _ListenSession(self, request, ws, rec, stats)
        try:
            await session.run()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return ws

    # ------------------------------------------------------------------ /v1/speak

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(request)
        refusal = self._check(request)
        if refusal is not None:
            return refusal
        encoding = request.query.get("encoding", "linear16")
        rate = int(request.query.get("sample_rate", "24000"))
        if encoding not in ("linear16", "mulaw"):
            return web.json_response({"err_code": "UNSUPPORTED", "err_msg": "encoding"}, status=400)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        request_id = str(uuid.uuid4())
        await ws.send_str(
            dumps(
                {
                    "type": "Metadata",
                    "request_id": request_id,
                    "model_name": request.query.get("model", "aura-2-thalia-en"),
                    "model_version": "2025-01-01.0",
                    "model_uuid": str(uuid.uuid4()),
                }
            )
        )
        text: list[str] = []
        sequence = 0
        producing: asyncio.Task[None] | None = None

        async def produce(chunk_text: str, seq: int) -> None:
            await asyncio.sleep(self.tts_delay)
            pcm = _tone_for(chunk_text, rate, self.char_ms)
            audio = pcm16_to_mulaw(pcm) if encoding == "mulaw" else pcm.tobytes()
            step = max(2, rate // 10 * (1 if encoding == "mulaw" else 2))  # 100 ms
            sent = 0
            for i in range(0, len(audio), step):
                piece = audio[i : i + step]
                limit = self.tts_drop_after_bytes
                if limit is not None and sent + len(piece) > limit and self.faults.take_drop():
                    abort(request)
                    return
                await ws.send_bytes(piece)
                sent += len(piece)
                await asyncio.sleep(0)
            await ws.send_str(dumps({"type": "Flushed", "sequence_id": seq}))

        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            rec.messages.append(data)
            kind = data.get("type")
            if kind == "Speak":
                text.append(str(data.get("text", "")))
            elif kind == "Flush":
                if producing is not None:
                    await producing
                chunk_text = "".join(text)
                text.clear()
                self.speak_texts.append(chunk_text)
                producing = self._spawn(produce(chunk_text, sequence))
                sequence += 1
            elif kind == "Clear":
                if producing is not None:
                    producing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await producing
                    producing = None
                text.clear()
                await ws.send_str(dumps({"type": "Cleared", "sequence_id": sequence}))
            elif kind == "Close":
                if producing is not None:
                    await producing
                await ws.close()
                break
        return ws


def speech_ms(audio: bytes, encoding: str = "linear16", sample_rate: int = 16000) -> int:
    """How much of ``audio`` the fake recogniser counts as speech (10 ms blocks), so a
    test can pick ``word_ms`` such that only the whole utterance yields every word."""
    samples = to_pcm16(audio, encoding).astype(np.float64)
    block = sample_rate // 100
    whole = len(samples) // block * block
    blocks = samples[:whole].reshape(-1, block)
    rms = np.sqrt(np.mean(blocks * blocks, axis=1)) if len(blocks) else np.zeros(0)
    return int(np.count_nonzero(rms >= SPEECH_RMS)) * 10


def _tone_for(text: str, rate: int, char_ms: int) -> np.ndarray:
    n = rate * char_ms * max(1, len(text)) // 1000
    t = np.arange(n) / rate
    return (6000 * np.sin(2 * np.pi * 220 * t)).astype("<i2")


class _ListenSession:
    """One ``/v1/listen`` connection: a scripted recogniser driven by speech energy."""

    def __init__(
        self,
        server: FakeDeepgramServer,
        request: web.Request,
        ws: web.WebSocketResponse,
        rec: Recorded,
        stats: ListenStats,
    ) -> None:
        q = request.query
        self.server = server
        self.request = request
        self.ws = ws
        self.rec = rec
        self.stats = stats
        self.encoding = q.get("encoding", "linear16")
        self.rate = int(q.get("sample_rate", "16000"))
        self.interim = q.get("interim_results", "false") == "true"
        endpointing = q.get("endpointing", "10")
        self.endpointing = None if endpointing == "false" else int(endpointing)
        self.utterance_end_ms = int(q["utterance_end_ms"]) if "utterance_end_ms" in q else None
        self.vad_events = q.get("vad_events", "false") == "true"
        self.request_id = str(uuid.uuid4())
        self.block = self.rate // 100  # 10 ms
        self.pending = np.zeros(0, dtype=np.int16)
        self.carry = b""
        self.sent_any = False
        self.stream_ms = 0
        self.utt_index = 0
        self.speech_ms = 0
        self.silence_ms = 0
        self.speaking = False
        self.heard = 0
        self.finalized = 0
        self.utterance_start_ms = 0
        self.last_word_end_ms = 0
        self.owe_utterance_end = False

    @property
    def words(self) -> list[str]:
        script = self.server.utterances
        if self.utt_index >= len(script):
            return []
        return script[self.utt_index].split()

    async def send(self, obj: dict[str, Any]) -> None:
        if not self.sent_any:
            self.sent_any = True
            if self.server.first_byte_delay:
                await asyncio.sleep(self.server.first_byte_delay)
        if obj.get("type") == "Results":
            self.stats.results.append(obj)
        await self.ws.send_str(dumps(obj))

    async def run(self) -> None:
        while True:
            try:
                msg = await self.ws.receive(timeout=self.server.idle_timeout)
            except TimeoutError:
                await self.ws.close(code=1011, message=b"NET-0001")
                return
            if msg.type is WSMsgType.BINARY:
                self.rec.audio.extend(msg.data)
                limit = self.server.drop_after_ms
                received_ms = self._bytes_to_ms(len(self.rec.audio))
                if limit is not None and received_ms >= limit and self.server.faults.take_drop():
                    abort(self.request)
                    return
                await self._audio(msg.data)
            elif msg.type is WSMsgType.TEXT:
                data = json.loads(msg.data)
                self.rec.messages.append(data)
                kind = data.get("type")
                if kind == "KeepAlive":
                    self.stats.keepalives += 1
                elif kind == "Finalize":
                    self.stats.finalizes += 1
                    await self._final(from_finalize=True, speech_final=False)
                elif kind == "CloseStream":
                    self.stats.closed_by_client = True
                    await self._final(from_finalize=False, speech_final=False, only_if_heard=True)
                    await self.send(self._metadata())
                    await self.ws.close()
                    return
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return

    def _bytes_to_ms(self, n: int) -> float:
        per_sample = 2 if self.encoding == "linear16" else 1
        return n / per_sample / self.rate * 1000

    async def _audio(self, data: bytes) -> None:
        if self.encoding == "linear16":
            data = self.carry + data
            self.carry = data[len(data) - len(data) % 2 :]
            data = data[: len(data) - len(data) % 2]
        samples = np.concatenate([self.pending, to_pcm16(data, self.encoding)])
        whole = len(samples) // self.block * self.block
        self.pending = samples[whole:]
        for start in range(0, whole, self.block):
            block = samples[start : start + self.block].astype(np.float64)
            rms = math.sqrt(float(np.mean(block * block))) if len(block) else 0.0
            await self._block(rms >= SPEECH_RMS)

    async def _block(self, speech: bool) -> None:
        self.stream_ms += 10
        if speech:
            if not self.speaking:
                self.speaking = True
                if self.speech_ms == 0:
                    self.utterance_start_ms = self.stream_ms - 10
                if self.vad_events:
                    await self.send(
                        {
                            "type": "SpeechStarted",
                            "channel": [0],
                            "timestamp": round((self.stream_ms - 10) / 1000, 3),
                        }
                    )
            self.speech_ms += 10
            self.silence_ms = 0
            heard = min(len(self.words), int(self.speech_ms / self.server.word_ms + 0.5))
            if heard > self.heard:
                self.heard = heard
                self.last_word_end_ms = self.stream_ms
                self.owe_utterance_end = True
                if self.interim:
                    await self.send(self._results(is_final=False, speech_final=False))
            return
        if self.speaking:
            self.silence_ms += 10
            if (
                self.endpointing is not None
                and self.silence_ms >= self.endpointing
                and self.heard > self.finalized
            ):
                await self._final(from_finalize=False, speech_final=True)
        if (
            self.utterance_end_ms is not None
            and self.owe_utterance_end
            and self.stream_ms - self.last_word_end_ms >= self.utterance_end_ms
        ):
            self.owe_utterance_end = False
            self.speaking = False
            await self.send(
                {
                    "type": "UtteranceEnd",
                    "channel": [0, 1],
                    "last_word_end": round(self.last_word_end_ms / 1000, 3),
                }
            )

    async def _final(
        self, *, from_finalize: bool, speech_final: bool, only_if_heard: bool = False
    ) -> None:
        if only_if_heard and self.heard <= self.finalized:
            return
        if self.server.delay:
            await asyncio.sleep(self.server.delay)
        await self.send(
            self._results(is_final=True, speech_final=speech_final, from_finalize=from_finalize)
        )
        self.finalized = self.heard
        if self.heard:
            # the utterance is over: the next speech is the next scripted sentence
            self.utt_index += 1
            self.speech_ms = 0
            self.heard = 0
            self.finalized = 0
            self.speaking = False

    def _results(
        self, *, is_final: bool, speech_final: bool, from_finalize: bool = False
    ) -> dict[str, Any]:
        words = self.words[self.finalized : self.heard]
        start_ms = self.utterance_start_ms + self.finalized * self.server.word_ms
        word_objs = [
            {
                "word": w.lower().strip(".,?!"),
                "start": round((start_ms + i * self.server.word_ms) / 1000, 3),
                "end": round((start_ms + (i + 1) * self.server.word_ms) / 1000, 3),
                "confidence": 0.98,
                "punctuated_word": w,
            }
            for i, w in enumerate(words)
        ]
        result: dict[str, Any] = {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round((self.stream_ms - start_ms) / 1000, 3),
            "start": round(start_ms / 1000, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {
                "alternatives": [
                    {"transcript": " ".join(words), "confidence": 0.98, "words": word_objs}
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": _MODEL_INFO,
                "model_uuid": "00000000-0000-4000-8000-000000000003",
            },
        }
        if from_finalize:
            result["from_finalize"] = True
        return result

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "0" * 64,
            "created": "2025-01-01T00:00:00.000Z",
            "duration": round(self.stream_ms / 1000, 3),
            "channels": 1,
            "models": ["00000000-0000-4000-8000-000000000003"],
            "model_info": {"00000000-0000-4000-8000-000000000003": _MODEL_INFO},
        }
