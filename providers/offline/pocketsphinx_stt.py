"""Offline speech recognition with pocketsphinx (the en-US model ships inside its wheel).

Decoding runs in one child process per worker (see ``_sphinx_host.py`` for why not a
thread): the event loop only hands bytes to a writer thread, and a reader thread hands
results back with ``call_soon_threadsafe``. The child loads the model once and pools
decoders across calls; it is started on the first ``open()`` (or by :func:`prewarm`)
and shared by every stream and event loop of the process.

Stream semantics (``gated=True``): the pipeline pushes audio only while the user speaks,
then calls ``finalize()``; partial hypotheses come at most every ``partial_ms`` of audio
and only when they changed; every ``finalize()`` yields exactly one ``final`` event,
with ``""`` when nothing was recognised, and the stream is ready for the next utterance.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from providers.base import PCM16_16K, AudioFormat, ConfigError, ProviderError, SttEvent
from providers.offline import _sphinx_host as wire

log = logging.getLogger(__name__)

NAME = "pocketsphinx"
LANGUAGES = ("en", "en-us")
MODELS = ("en-us",)
DEFAULT_PARTIAL_MS = 200
HOST_START_TIMEOUT_S = 30.0

#: pocketsphinx settings an agent may tune through ``options`` (all others are refused,
#: so an agent config cannot point the decoder at arbitrary files).
_TUNABLE: dict[str, type] = {
    "dither": bool,  # half-bit noise before decoding (default on; see _sphinx_host.py)
    "fwdflat": bool,  # the second search pass: better words, ~0.1 s more per finalize
    "bestpath": bool,
    "beam": float,
    "wbeam": float,
    "lw": float,
    "wip": float,
    "pip": float,
}


def _check_language(language: str | None) -> None:
    if language is not None and language.lower() not in LANGUAGES:
        raise ConfigError(
            f"{NAME} only recognises English (en, en-us), not {language!r}"
        )


def _decoder_settings(options: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    config: dict[str, Any] = {}
    partial_ms = DEFAULT_PARTIAL_MS
    for key, value in options.items():
        if key == "partial_ms":
            if not isinstance(value, int) or isinstance(value, bool) or not 20 <= value <= 5000:
                raise ConfigError(f"{NAME}: partial_ms must be an integer from 20 to 5000")
            partial_ms = value
        elif key in _TUNABLE:
            kind = _TUNABLE[key]
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"{NAME}: option {key} must be true or false")
            if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"{NAME}: option {key} must be a number")
            config[key] = value
        else:
            known = ", ".join(["partial_ms", *_TUNABLE])
            raise ConfigError(f"{NAME}: unknown option {key!r} (known: {known})")
    return config, partial_ms


class _Host:
    """One decoding child process, shared by every stream with the same decoder config."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.ready: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self.dead = False
        self._grows: queue.SimpleQueue[concurrent.futures.Future[int]] = queue.SimpleQueue()
        self._sinks: dict[int, _StreamSink] = {}
        self._sinks_lock = threading.Lock()
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        to_host_r, to_host_w = os.pipe()
        from_host_r, from_host_w = os.pipe()
        script = Path(wire.__file__).resolve()
        try:
            self._process = subprocess.Popen(
                [sys.executable, str(script), str(to_host_r), str(from_host_w),
                 json.dumps(settings)],
                pass_fds=(to_host_r, from_host_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            os.close(to_host_w)
            os.close(from_host_r)
            raise ProviderError(f"{NAME}: cannot start the decoding process: {exc}",
                                provider=NAME, retryable=False) from None
        finally:
            os.close(to_host_r)
            os.close(from_host_w)
        self._tx = Connection(to_host_w, readable=False)
        self._rx = Connection(from_host_r, writable=False)
        threading.Thread(target=self._write_loop, name="pocketsphinx-tx", daemon=True).start()
        threading.Thread(target=self._read_loop, name="pocketsphinx-rx", daemon=True).start()

    # -- parent side of the pipe

    def send(self, message: bytes) -> None:
        """Queue a message for the child; never blocks the caller."""
        if self.dead:
            raise ProviderError(f"{NAME}: the decoding process stopped", provider=NAME)
        self._outbox.put(message)

    def attach(self, sink: _StreamSink) -> None:
        with self._sinks_lock:
            self._sinks[sink.stream_id] = sink
        self.send(wire.pack(wire.OP_OPEN, sink.stream_id))

    def detach(self, stream_id: int) -> None:
        with self._sinks_lock:
            self._sinks.pop(stream_id, None)
        with contextlib.suppress(ProviderError):
            self.send(wire.pack(wire.OP_CLOSE, stream_id))

    def grow(self, decoders: int) -> concurrent.futures.Future[int]:
        """Have at least ``decoders`` decoders in the pool; resolves with the pool size."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._grows.put(future)  # replies come back in request order
        self.send(wire.pack(wire.OP_GROW, 0, wire.COUNT.pack(decoders)))
        return future

    def _write_loop(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._tx.send_bytes(message)
            except OSError:
                break
        with contextlib.suppress(OSError):
            self._tx.close()

    def _read_loop(self) -> None:
        try:
            while True:
                op, stream_id, payload = wire.unpack(self._rx.recv_bytes())
                self._dispatch(op, stream_id, payload)
        except (EOFError, OSError):
            pass
        finally:
            self._died()

    def _dispatch(self, op: int, stream_id: int, payload: bytes) -> None:
        if op == wire.OP_READY:
            self.ready.set_result(json.loads(payload))
            return
        if op == wire.OP_GROWN:
            self._grows.get_nowait().set_result(wire.COUNT.unpack(payload)[0])
            return
        if op == wire.OP_ERROR and stream_id == 0:
            self.ready.set_exception(
                ProviderError(f"{NAME}: {payload.decode(errors='replace')}",
                              provider=NAME, retryable=False)
            )
            return
        with self._sinks_lock:
            sink = self._sinks.get(stream_id)
        if sink is None:
            return
        if op == wire.OP_PARTIAL:
            sink.deliver(SttEvent("partial", payload.decode(errors="replace")))
        elif op == wire.OP_FINAL:
            body = json.loads(payload)
            confidence = body["confidence"] if body["confidence"] >= 0 else None
            sink.deliver(SttEvent("final", body["text"], confidence, speech_final=True))
        elif op == wire.OP_ERROR:
            sink.deliver(ProviderError(f"{NAME}: {payload.decode(errors='replace')}",
                                       provider=NAME))

    def _died(self) -> None:
        self.dead = True
        self._outbox.put(None)
        if not self.ready.done():
            self.ready.set_exception(
                ProviderError(f"{NAME}: the decoding process exited during start-up",
                              provider=NAME)
            )
        with self._sinks_lock:
            sinks = list(self._sinks.values())
            self._sinks.clear()
        for sink in sinks:
            sink.deliver(ProviderError(f"{NAME}: the decoding process stopped", provider=NAME))
        while not self._grows.empty():
            self._grows.get_nowait().set_exception(
                ProviderError(f"{NAME}: the decoding process stopped", provider=NAME)
            )
        with contextlib.suppress(OSError):
            self._rx.close()
        with contextlib.suppress(Exception):
            self._process.wait(timeout=5)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the pipe (the child exits on EOF) and reap it."""
        self._outbox.put(None)
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    @property
    def pid(self) -> int:
        return self._process.pid


_hosts: dict[str, _Host] = {}
_hosts_lock = threading.Lock()


def _host_for(settings: dict[str, Any]) -> _Host:
    key = json.dumps(settings, sort_keys=True)
    with _hosts_lock:
        host = _hosts.get(key)
        if host is None or host.dead:
            host = _hosts[key] = _Host(settings)
        return host


async def _ready_host(settings: dict[str, Any]) -> _Host:
    host = _host_for(settings)
    # shielded: a cancelled waiter must not cancel the start-up every stream shares
    waiter = asyncio.shield(asyncio.wrap_future(host.ready))
    try:
        await asyncio.wait_for(waiter, HOST_START_TIMEOUT_S)
    except TimeoutError:
        raise ProviderError(f"{NAME}: the decoding process did not start in time",
                            provider=NAME) from None
    return host


@atexit.register
def shutdown() -> None:
    """Stop every decoding process of this worker (also runs at interpreter exit)."""
    with _hosts_lock:
        hosts = list(_hosts.values())
        _hosts.clear()
    for host in hosts:
        host.stop()


class _StreamSink:
    """Where the reader thread drops one stream's events: onto that stream's own loop."""

    def __init__(self, stream_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.stream_id = stream_id
        self.loop = loop
        self.queue: asyncio.Queue[SttEvent | ProviderError | None] = asyncio.Queue()

    def deliver(self, item: SttEvent | ProviderError | None) -> None:
        with contextlib.suppress(RuntimeError):  # that loop is already closed
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


_stream_ids = itertools.count(1)


class PocketsphinxSttStream:
    """One call's recognition stream."""

    def __init__(self, host: _Host, loop: asyncio.AbstractEventLoop) -> None:
        self._host = host
        self._sink = _StreamSink(next(_stream_ids), loop)
        self._odd = b""
        self._closed = False
        host.attach(self._sink)

    @property
    def host_pid(self) -> int:
        """The decoding process serving this stream (diagnostics, fault-injection tests)."""
        return self._host.pid

    async def push(self, audio: bytes) -> None:
        if self._closed or not audio:
            return
        if self._odd:
            audio = self._odd + audio
        cut = len(audio) & ~1
        self._odd = audio[cut:]
        if cut:
            self._host.send(wire.pack(wire.OP_AUDIO, self._sink.stream_id, audio[:cut]))

    async def finalize(self) -> None:
        if self._closed:
            return
        self._odd = b""
        self._host.send(wire.pack(wire.OP_FINALIZE, self._sink.stream_id))

    def events(self) -> AsyncIterator[SttEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[SttEvent]:
        while True:
            item = await self._sink.queue.get()
            if item is None:
                return
            if isinstance(item, ProviderError):
                raise item
            yield item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._host.detach(self._sink.stream_id)
        self._sink.queue.put_nowait(None)


class PocketsphinxStt:
    """The ``pocketsphinx`` STT provider."""

    name = NAME
    gated = True

    def __init__(self, *, options: Mapping[str, Any] | None = None,
                 language: str | None = None, model: str | None = None) -> None:
        _check_language(language)
        if model is not None and model.lower() not in MODELS:
            raise ConfigError(f"{NAME}: unknown model {model!r} (available: en-us)")
        config, partial_ms = _decoder_settings(options or {})
        self._settings = {"config": config, "partial_ms": partial_ms}

    def input_formats(self) -> Sequence[AudioFormat]:
        return (PCM16_16K,)

    async def open(self, fmt: AudioFormat, *, language: str) -> PocketsphinxSttStream:
        _check_language(language)
        if fmt != PCM16_16K:
            raise ConfigError(f"{NAME} takes {PCM16_16K} audio, not {fmt}")
        host = await _ready_host(self._settings)
        return PocketsphinxSttStream(host, asyncio.get_running_loop())

    async def prewarm(self, decoders: int = 1) -> float:
        """Start the decoding process now, with ``decoders`` decoders ready.

        A worker should call this at start-up with the number of callers it expects to
        talk at the same moment: a decoder created on demand later loads the model
        (~0.3 s) while every stream of the process waits. Returns the model load time
        of the first decoder in seconds.
        """
        host = await _ready_host(self._settings)
        if decoders > 1:
            await asyncio.shield(asyncio.wrap_future(host.grow(decoders)))
        return float(host.ready.result()["load_s"])
