"""Composite providers that move to the next engine of an agent's route when one fails.

Each wrapper presents the ordinary protocol (:class:`SttProvider`, :class:`LlmProvider`,
:class:`TtsProvider`) over an ordered chain: the agent's primary engine, then its
``fallback`` list. A provider *fails* when it raises, when its connection drops
mid-stream, or when it stays silent longer than ``silence_timeout_s`` where an answer is
owed (STT: the final after ``finalize()``; LLM: the first and each next token; TTS: the
first and each next audio chunk). The switch is reported through
``on_failover(kind, from_name, to_name, reason)`` (the runtime turns it into a
``provider.failover`` call event) and sticks for the rest of the call.

What each kind does so the caller notices as little as possible:

- STT: the audio of the current utterance is kept (bounded by ``max_replay_s``) and
  replayed to the new stream, followed by ``finalize()`` if the engine had already
  asked for it, so no words are lost; words already delivered as finals are not
  delivered twice.
- LLM: before any text, the request simply goes to the next model. After text was
  streamed, the next model is asked to continue the reply from where it stopped.
- TTS: the sentence is synthesized again by the next engine (converted to the format the
  call started with).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np

from providers.base import (
    AudioFormat,
    ChatMessage,
    LlmDelta,
    LlmProvider,
    ProviderError,
    SttEvent,
    SttProvider,
    SttStream,
    ToolSpec,
    TtsProvider,
    TtsStream,
)
from providers.cloud._common import scrub

log = logging.getLogger(__name__)

FailoverCallback = Callable[[str, str, str, str], None]
DEFAULT_SILENCE_TIMEOUT_S = 2.0
DEFAULT_OPEN_TIMEOUT_S = 5.0
CONTINUE_PROMPT = (
    "Your previous reply was cut off after the text above. Continue it from exactly "
    "where it stopped, without repeating anything."
)
_END = object()


def describe(exc: BaseException) -> str:
    """A short, key-free reason for events and logs."""
    if isinstance(exc, ProviderError):
        return scrub(str(exc))[:300]
    if isinstance(exc, TimeoutError):
        return scrub(str(exc)) or "timed out"
    text = scrub(str(exc))[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def exhausted(kind: str, last: BaseException | None, reason: str) -> ProviderError:
    status = last.status if isinstance(last, ProviderError) else 502
    retry_after = last.retry_after if isinstance(last, ProviderError) else None
    return ProviderError(
        f"{kind}: every provider failed (last: {reason})",
        provider=last.provider if isinstance(last, ProviderError) else "",
        status=status,
        retryable=False,
        retry_after=retry_after,
    )


class _Reporter:
    def __init__(self, kind: str, callback: FailoverCallback | None) -> None:
        self.kind = kind
        self.callback = callback

    def __call__(self, from_name: str, to_name: str, reason: str) -> None:
        log.warning("%s failover: %s -> %s (%s)", self.kind, from_name, to_name, reason)
        if self.callback is not None:
            try:
                self.callback(self.kind, from_name, to_name, reason)
            except Exception:  # reporting must not break the call
                log.exception("failover callback failed")


# --------------------------------------------------------------------------- audio


def _g711_tables() -> tuple[np.ndarray, np.ndarray]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    mulaw = np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exp = (a >> 4) & 0x07
    mant = a & 0x0F
    mag = np.where(exp == 0, (mant << 4) + 8, ((mant << 4) + 0x108) << np.maximum(exp - 1, 0))
    alaw = np.where(a & 0x80, mag, -mag).astype(np.int16)
    return mulaw, alaw


_MULAW, _ALAW = _g711_tables()


def _encode_mulaw(x: np.ndarray) -> bytes:
    v = x.astype(np.int32)
    sign = np.where(v < 0, 0x80, 0)
    v = np.minimum(np.abs(v), 32635) + 0x84
    exp = np.clip(np.floor(np.log2(v)).astype(np.int32) - 7, 0, 7)
    mant = (v >> (exp + 3)) & 0x0F
    return (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


def _encode_alaw(x: np.ndarray) -> bytes:
    v = x.astype(np.int32)
    sign = np.where(v >= 0, 0x80, 0)
    v = np.minimum(np.abs(v), 32767)
    exp = np.clip(np.floor(np.log2(np.maximum(v, 1))).astype(np.int32) - 7, 0, 7)
    mant = np.where(exp == 0, v >> 4, v >> (exp + 3)) & 0x0F
    return ((sign | (exp << 4) | mant) ^ 0x55).astype(np.uint8).tobytes()


class FormatConverter:
    """Streaming conversion between two :class:`AudioFormat`s (G.711 ↔ pcm16, rate).

    Only used when a fallback engine does not take (or produce) the format the call
    negotiated with the primary one.
    """

    def __init__(self, src: AudioFormat, dst: AudioFormat) -> None:
        import soxr

        self.src = src
        self.dst = dst
        self._odd = b""
        self._resampler = (
            soxr.ResampleStream(src.sample_rate, dst.sample_rate, 1, dtype="int16")
            if src.sample_rate != dst.sample_rate
            else None
        )

    def _decode(self, data: bytes) -> np.ndarray:
        if self.src.encoding == "mulaw":
            return _MULAW[np.frombuffer(data, dtype=np.uint8)]
        if self.src.encoding == "alaw":
            return _ALAW[np.frombuffer(data, dtype=np.uint8)]
        data = self._odd + data
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        return np.frombuffer(data[:cut], dtype="<i2")

    def _encode(self, samples: np.ndarray) -> bytes:
        if self.dst.encoding == "mulaw":
            return _encode_mulaw(samples)
        if self.dst.encoding == "alaw":
            return _encode_alaw(samples)
        return samples.astype("<i2").tobytes()

    def process(self, data: bytes, *, last: bool = False) -> bytes:
        samples = self._decode(data)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        return self._encode(samples) if len(samples) else b""


def _identity(data: bytes) -> bytes:
    return data


# --------------------------------------------------------------------------- STT


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


class FailoverStt:
    """An :class:`SttProvider` over an ordered chain of them."""

    def __init__(
        self,
        chain: Sequence[SttProvider],
        on_failover: FailoverCallback | None = None,
        *,
        silence_timeout_s: float = DEFAULT_SILENCE_TIMEOUT_S,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        max_replay_s: float = 30.0,
    ) -> None:
        if not chain:
            raise ValueError("a failover chain needs at least one provider")
        self.chain = list(chain)
        self.name = self.chain[0].name
        # a provider that needs gating (speech + finalize) gets it; the others cope
        self.gated = any(p.gated for p in self.chain)
        self.report = _Reporter("stt", on_failover)
        self.silence_timeout_s = silence_timeout_s
        self.open_timeout_s = open_timeout_s
        self.max_replay_s = max_replay_s
        self.index = 0  # sticky: later streams of this call start at the working one

    def input_formats(self) -> Sequence[AudioFormat]:
        return self.chain[self.index].input_formats()

    async def open(self, fmt: AudioFormat, *, language: str) -> FailoverSttStream:
        stream = FailoverSttStream(self, fmt, language)
        await stream.start()
        return stream


class FailoverSttStream:
    """Feeds the current engine, keeps the utterance's audio, switches and replays."""

    def __init__(self, owner: FailoverStt, fmt: AudioFormat, language: str) -> None:
        self.owner = owner
        self.fmt = fmt
        self.language = language
        self.index = owner.index
        self.gen = 0
        self.stream: SttStream | None = None
        self.convert: Callable[[bytes], bytes] = _identity
        self._lock = asyncio.Lock()
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._max_bytes = int(owner.max_replay_s * fmt.sample_rate * fmt.bytes_per_sample)
        self._finalized = False  # finalize() was called for the buffered utterance
        self._owed = False  # finalize() is waiting for a final (or an utterance_end)
        self._pending = False  # a partial came after the last final
        self._heard = False  # the engine said anything about this utterance
        self._delivered: list[str] = []  # final words of this utterance already passed on
        self._skip: list[str] = []  # words a replacement will repeat, to drop once
        self._error: ProviderError | None = None
        self._closed = False
        self.failovers = 0

    @property
    def current_name(self) -> str:
        return self.owner.chain[self.index].name

    # ------------------------------------------------------------------ switching

    async def _open(self, i: int) -> None:
        provider = self.owner.chain[i]
        formats = list(provider.input_formats())
        target = self.fmt if self.fmt in formats else formats[0]
        stream = await _opened(
            provider.name, provider.open(target, language=self.language), self.owner.open_timeout_s
        )
        self.convert = (
            _identity if target == self.fmt else FormatConverter(self.fmt, target).process
        )
        self.stream = stream
        self.index = i
        self.owner.index = i
        self.gen += 1
        self._pump = asyncio.create_task(self._run_pump(self.gen, stream), name="stt-failover-pump")

    async def start(self) -> None:
        async with self._lock:
            try:
                await self._open(self.index)
            except Exception as exc:
                await self._advance(describe(exc), exc, replay=False)
                if self._error is not None:
                    raise self._error from None

    async def _advance(self, reason: str, exc: BaseException | None, *, replay: bool) -> None:
        """Move to the next engine that opens (and takes the replay). Lock held."""
        old, self.stream = self.stream, None
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        self._cancel_timer()
        if old is not None:
            _background(_close_quietly(old))
        from_name = self.current_name
        last = exc
        for j in range(self.index + 1, len(self.owner.chain)):
            to_name = self.owner.chain[j].name
            self.owner.report(from_name, to_name, reason)
            self.failovers += 1
            try:
                await self._open(j)
                if replay:
                    await self._replay()
                return
            except Exception as err:
                last, reason, from_name = err, describe(err), to_name
                if self._pump is not None and self._pump is not asyncio.current_task():
                    self._pump.cancel()
                if self.stream is not None:
                    _background(_close_quietly(self.stream))
                    self.stream = None
        self._error = exhausted("stt", last, reason)
        self._out.put_nowait(_END)

    async def _replay(self) -> None:
        """The current utterance again, to the new engine; then its pending finalize."""
        assert self.stream is not None
        self._skip = list(self._delivered)
        for chunk in list(self._buffer):
            data = self.convert(chunk)
            if data:
                await self.stream.push(data)
        self._pending = self._heard = False
        if self._finalized and self._buffer:
            await self.stream.finalize()
            self._owed = True
            self._arm_timer()

    async def _fail(self, gen: int, reason: str, exc: BaseException | None) -> None:
        async with self._lock:
            if gen != self.gen or self._closed or self._error is not None:
                return  # already handled (another path noticed first)
            await self._advance(reason, exc, replay=True)

    # ------------------------------------------------------------------ events

    async def _run_pump(self, gen: int, stream: SttStream) -> None:
        try:
            async for event in stream.events():
                if gen != self.gen:
                    return
                self._on_event(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._fail(gen, describe(exc), exc)
            return
        if not self._closed:
            await self._fail(gen, f"{self.current_name}: stream ended unexpectedly", None)

    def _dedupe(self, text: str, *, consume: bool) -> str:
        if not self._skip:
            return text
        words = text.split()
        i = 0
        while i < len(words) and i < len(self._skip) and _norm(words[i]) == self._skip[i]:
            i += 1
        if consume:
            # a mismatch means the new engine heard it differently: stop skipping
            self._skip = self._skip[i:] if i else []
        return " ".join(words[i:])

    def _on_event(self, event: SttEvent) -> None:
        """Pass events on (minus replayed words) and track what the engine still owes.

        The utterance's audio is not dropped when a final arrives (it may be a final for
        earlier audio, still in flight when ``finalize()`` was sent) but when the next
        utterance starts after the engine answered; replayed audio that yields words
        already delivered is harmless thanks to ``_skip``.
        """
        if event.kind == "partial":
            self._pending = self._heard = True
            text = self._dedupe(event.text, consume=False)
            if text:
                self._out.put_nowait(SttEvent("partial", text, event.confidence))
            return
        if event.kind == "final":
            text = self._dedupe(event.text, consume=True)
            self._pending = False
            self._heard = True
            self._answered()
            self._delivered += [_norm(w) for w in event.text.split()]
            if event.speech_final and not self.owner.gated:
                self._end_utterance()
            if text:
                self._out.put_nowait(
                    SttEvent("final", text, event.confidence, speech_final=event.speech_final)
                )
            return
        if event.kind == "utterance_end":
            self._answered()
            if not self.owner.gated:
                self._end_utterance()
        self._out.put_nowait(event)

    def _answered(self) -> None:
        if self._finalized:
            self._owed = False
            self._cancel_timer()

    def _end_utterance(self) -> None:
        self._buffer.clear()
        self._buffered = 0
        self._delivered = []
        self._skip = []
        self._pending = self._heard = False

    def _arm_timer(self) -> None:
        """Watch for a final that does not come (only while there is an engine to try)."""
        self._cancel_timer()
        has_next = self.index + 1 < len(self.owner.chain)
        if self._owed and has_next and self.owner.silence_timeout_s > 0:
            self._timer = asyncio.create_task(self._deadline(self.gen))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._timer = None

    async def _deadline(self, gen: int) -> None:
        seconds = self.owner.silence_timeout_s
        await asyncio.sleep(seconds)
        await self._fail(gen, f"{self.current_name}: no final within {seconds:g} s", None)

    def events(self) -> AsyncIterator[SttEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[SttEvent]:
        while True:
            item = await self._out.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    # ------------------------------------------------------------------ input

    def _keep(self, audio: bytes) -> None:
        self._buffer.append(audio)
        self._buffered += len(audio)
        while self._buffered > self._max_bytes and len(self._buffer) > 1:
            self._buffered -= len(self._buffer.popleft())

    async def push(self, audio: bytes) -> None:
        if self._closed or self._error is not None or not audio:
            return
        async with self._lock:
            if self._error is not None or self.stream is None:
                return
            if self._finalized:  # the next utterance starts
                if not self._owed:
                    self._end_utterance()  # else keep it: a final is still due for it
                self._finalized = False
            self._keep(audio)
            gen = self.gen
            try:
                data = self.convert(audio)
                if data:
                    await self.stream.push(data)
            except Exception as exc:
                if gen == self.gen:
                    await self._advance(describe(exc), exc, replay=True)

    async def finalize(self) -> None:
        if self._closed or self._error is not None:
            return
        async with self._lock:
            if self._error is not None or self.stream is None:
                return
            self._finalized = True
            # a final is due if words are pending, or if the engine said nothing at all
            # about speech it was sent (gated: what was pushed is speech)
            self._owed = self._pending or (bool(self._buffer) and not self._heard)
            gen = self.gen
            try:
                await self.stream.finalize()
            except Exception as exc:
                if gen == self.gen:
                    await self._advance(describe(exc), exc, replay=True)
                return
            self._arm_timer()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        if self._pump is not None:
            self._pump.cancel()
        if self.stream is not None:
            await _close_quietly(self.stream)
        self._out.put_nowait(_END)


async def _opened(name: str, opening: Any, seconds: float) -> Any:
    try:
        return await asyncio.wait_for(opening, seconds)
    except TimeoutError:
        raise ProviderError(
            f"{name}: connect timed out after {seconds:g} s", provider=name
        ) from None


async def _aclose(agen: Any) -> None:
    """Close an inner stream (cancelling its request); it may already be finished."""
    close = getattr(agen, "aclose", None)
    if close is not None:
        with contextlib.suppress(BaseException):
            await close()


async def _close_quietly(stream: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stream.aclose(), 3.0)


_background_tasks: set[asyncio.Task[Any]] = set()


def _background(coro: Any) -> None:
    """Fire and forget, but keep a reference so the task is not collected mid-way."""
    task = asyncio.create_task(coro)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


# --------------------------------------------------------------------------- LLM


class FailoverLlm:
    """An :class:`LlmProvider` over an ordered chain of them."""

    def __init__(
        self,
        chain: Sequence[LlmProvider],
        on_failover: FailoverCallback | None = None,
        *,
        silence_timeout_s: float = DEFAULT_SILENCE_TIMEOUT_S,
    ) -> None:
        if not chain:
            raise ValueError("a failover chain needs at least one provider")
        self.chain = list(chain)
        self.name = self.chain[0].name
        self.report = _Reporter("llm", on_failover)
        self.silence_timeout_s = silence_timeout_s
        self.index = 0

    async def warm(self) -> None:
        """Warm the whole chain: a fallback should not start cold either."""
        results = await asyncio.gather(*(p.warm() for p in self.chain), return_exceptions=True)
        for provider, result in zip(self.chain, results, strict=True):
            if isinstance(result, Exception):
                log.debug("warm-up of %s failed: %s", provider.name, describe(result))

    def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmDelta]:
        return self._stream(messages, tools)

    async def _stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[LlmDelta]:
        said = ""
        last: BaseException | None = None
        reason = ""
        while True:
            provider = self.chain[self.index]
            request = list(messages)
            if said:
                request += [ChatMessage("assistant", said), ChatMessage("system", CONTINUE_PROMPT)]
            agen = provider.stream(request, tools=tools)
            try:
                try:
                    while True:
                        delta = await asyncio.wait_for(anext(agen), self.silence_timeout_s)
                        said += delta.text
                        yield delta
                except StopAsyncIteration:
                    return
            except (TimeoutError, Exception) as exc:
                last = exc
                reason = (
                    f"{provider.name}: no token within {self.silence_timeout_s:g} s"
                    if isinstance(exc, TimeoutError)
                    else describe(exc)
                )
            finally:
                await _aclose(agen)
            if self.index + 1 >= len(self.chain):
                raise exhausted("llm", last, reason)
            self.index += 1
            self.report(provider.name, self.chain[self.index].name, reason)


# --------------------------------------------------------------------------- TTS


class FailoverTts:
    """A :class:`TtsProvider` over an ordered chain of them."""

    def __init__(
        self,
        chain: Sequence[TtsProvider],
        on_failover: FailoverCallback | None = None,
        *,
        silence_timeout_s: float = DEFAULT_SILENCE_TIMEOUT_S,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
    ) -> None:
        if not chain:
            raise ValueError("a failover chain needs at least one provider")
        self.chain = list(chain)
        self.name = self.chain[0].name
        self.report = _Reporter("tts", on_failover)
        self.silence_timeout_s = silence_timeout_s
        self.open_timeout_s = open_timeout_s
        self.index = 0

    def output_formats(self) -> Sequence[AudioFormat]:
        return self.chain[self.index].output_formats()

    async def open(
        self, fmt: AudioFormat, *, voice: str | None, language: str
    ) -> FailoverTtsStream:
        stream = FailoverTtsStream(self, fmt, voice, language)
        await stream.start()
        return stream


class FailoverTtsStream:
    """Speaks with the current engine; on failure the sentence goes to the next one."""

    def __init__(
        self, owner: FailoverTts, fmt: AudioFormat, voice: str | None, language: str
    ) -> None:
        self.owner = owner
        self.requested = fmt
        self.voice = voice
        self.language = language
        self.streams: dict[int, TtsStream] = {}
        self.output_format = fmt
        self.failovers = 0

    async def _stream(self, i: int) -> TtsStream:
        stream = self.streams.get(i)
        if stream is None:
            provider = self.owner.chain[i]
            # the voice in the agent's config belongs to the primary engine; the
            # fallbacks use the voice of their own route entry (or their default)
            voice = self.voice if i == 0 else None
            stream = await _opened(
                provider.name,
                provider.open(self.requested, voice=voice, language=self.language),
                self.owner.open_timeout_s,
            )
            self.streams[i] = stream
        return stream

    async def start(self) -> None:
        while True:
            i = self.owner.index
            try:
                stream = await self._stream(i)
                self.output_format = stream.output_format
                return
            except Exception as exc:
                self._hop(i, exc, describe(exc))

    def _hop(self, i: int, exc: BaseException | None, reason: str) -> None:
        if i + 1 >= len(self.owner.chain):
            raise exhausted("tts", exc, reason)
        self.owner.index = i + 1
        self.failovers += 1
        self.owner.report(self.owner.chain[i].name, self.owner.chain[i + 1].name, reason)

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        return self._synthesize(text)

    async def _synthesize(self, text: str) -> AsyncIterator[bytes]:
        timeout = self.owner.silence_timeout_s
        while True:
            i = self.owner.index
            provider = self.owner.chain[i]
            try:
                stream = await self._stream(i)
            except Exception as exc:
                self._hop(i, exc, describe(exc))
                continue
            convert: Callable[..., bytes] = _identity
            converter: FormatConverter | None = None
            if stream.output_format != self.output_format:
                converter = FormatConverter(stream.output_format, self.output_format)
                convert = converter.process
            agen = stream.synthesize(text)
            try:
                try:
                    while True:
                        chunk = await asyncio.wait_for(anext(agen), timeout)
                        data = convert(chunk)
                        if data:
                            yield data
                except StopAsyncIteration:
                    if converter is not None:
                        tail = converter.process(b"", last=True)
                        if tail:
                            yield tail
                    return
            except (TimeoutError, Exception) as exc:
                reason = (
                    f"{provider.name}: no audio within {timeout:g} s"
                    if isinstance(exc, TimeoutError)
                    else describe(exc)
                )
                failure: BaseException = exc
            finally:
                await _aclose(agen)
            stale = self.streams.pop(i, None)
            if stale is not None:
                _background(_close_quietly(stale))
            self._hop(i, failure, reason)

    async def aclose(self) -> None:
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            await _close_quietly(stream)
