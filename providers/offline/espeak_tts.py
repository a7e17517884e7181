"""Offline speech synthesis with libespeak-ng, in-process through ctypes.

The library and its voice data come from the ``espeakng-loader`` wheel (no system
package). libespeak-ng keeps global state and is not thread-safe, so every call into it
happens on ONE dedicated thread per process; streams queue jobs to that thread and get
audio back on their own event loop chunk by chunk, as the library's callback produces it
(``BUFFER_MS`` per chunk), so the first audio does not wait for the whole sentence.
ctypes releases the GIL while the library synthesizes, so the event loop keeps running.

Cancelling ``synthesize`` marks the job: a queued job is skipped, a running one is
aborted at the next callback (the callback returns 1, which stops espeak_Synth).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import queue
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers.base import AudioFormat, ConfigError, ProviderError

NAME = "espeak"
NATIVE_RATE = 22050  # every voice in the wheel's data; checked against espeak_Initialize
BUFFER_MS = 60

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_EE_OK = 0

#: (option, espeak parameter, lowest, highest)
_PARAMETERS = (
    ("rate", _PARAM_RATE, 80, 450),
    ("pitch", _PARAM_PITCH, 0, 99),
    ("volume", _PARAM_VOLUME, 0, 200),
)
_DEFAULTS = {"rate": 175, "pitch": 50, "volume": 100}


class _Event(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    )


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def default_voice(language: str | None) -> str:
    """espeak's voice for an agent language: ``en`` speaks American English."""
    lang = (language or "en").lower()
    return "en-us" if lang == "en" else lang


def list_voices() -> list[str]:
    """Voice names in the wheel's data (the file names under ``lang/``), read from disk.

    Cheap and library-free, so the provider catalogue can list them without loading
    libespeak-ng.
    """
    try:
        import espeakng_loader

        root = Path(espeakng_loader.get_data_path()) / "lang"
    except Exception:
        return []
    return sorted({p.name.lower() for p in root.rglob("*") if p.is_file()})


def parse_options(options: Mapping[str, Any]) -> dict[str, int]:
    params = dict(_DEFAULTS)
    allowed = {name: (low, high) for name, _, low, high in _PARAMETERS}
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(f"{NAME}: unknown option {key!r} (known: {', '.join(allowed)})")
        low, high = allowed[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{NAME}: {key} must be an integer from {low} to {high}")
        params[key] = value
    return params


# --------------------------------------------------------------------------- the engine


_DONE = object()
_Call = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


@dataclass(eq=False)
class _Job:
    """One sentence to speak, and where its audio goes."""

    text: str
    voice: str
    params: Mapping[str, int]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[bytes | BaseException | object] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set from the loop, read by the engine thread

    def deliver(self, item: bytes | BaseException | object) -> None:
        with contextlib.suppress(RuntimeError):  # the consumer's loop is already closed
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class _Engine:
    """The process's single libespeak-ng, owned by one thread."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | _Call] = queue.SimpleQueue()
        self._current: _Job | None = None
        self._applied: tuple[str, tuple[tuple[str, int], ...]] | None = None
        self._lib: Any = None
        #: jobs finished / cut short by cancellation, samples produced (engine thread only)
        self.stats = {"completed": 0, "aborted": 0, "samples": 0}
        self._callback = _SynthCallback(self._on_audio)  # kept alive as long as the engine
        self.started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="espeak-ng", daemon=True)
        self._thread.start()

    # -- called from any thread

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the engine thread (all library access goes through here)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    # -- the engine thread

    def _run(self) -> None:
        try:
            self.started.set_result(self._initialize())
        except BaseException as exc:
            self.started.set_exception(exc)
            return
        while True:
            item = self._jobs.get()
            if isinstance(item, _Job):
                self._synthesize(item)
            else:
                fn, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)

    def _initialize(self) -> int:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = (_SynthCallback,)
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = (
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        )
        lib.espeak_Synth.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        rate = int(lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data,
                                         _INITIALIZE_DONT_EXIT))
        if rate <= 0:
            raise ProviderError(f"{NAME}: libespeak-ng failed to initialize", provider=NAME,
                                retryable=False)
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        return rate

    def set_voice(self, voice: str, params: Mapping[str, int]) -> bool:
        """Select ``voice`` and ``params`` unless already selected; False if no such voice."""
        key = (voice, tuple(sorted(params.items())))
        if key == self._applied:
            return True
        self._applied = None
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            return False
        for name, parameter, _, _ in _PARAMETERS:
            self._lib.espeak_SetParameter(parameter, params[name], 0)
        self._applied = key
        return True

    def _synthesize(self, job: _Job) -> None:
        if job.cancelled:
            self.stats["aborted"] += 1
            job.deliver(_DONE)
            return
        try:
            if not self.set_voice(job.voice, job.params):
                raise ProviderError(f"{NAME}: no voice {job.voice!r}", provider=NAME,
                                    status=400, retryable=False)
            text = job.text.replace("\0", " ").encode() + b"\0"
            self._current = job
            try:
                result = self._lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0,
                                                _CHARS_UTF8 | _ENDPAUSE, None, None)
            finally:
                self._current = None
            self.stats["aborted" if job.cancelled else "completed"] += 1
            if result != _EE_OK and not job.cancelled:
                raise ProviderError(f"{NAME}: synthesis failed (error {result})",
                                    provider=NAME)
        except ProviderError as exc:
            job.deliver(exc)
        job.deliver(_DONE)

    def _on_audio(self, wav: Any, samples: int, _events: Any) -> int:
        job = self._current
        if job is None or job.cancelled:
            return 1  # abort espeak_Synth
        if samples > 0 and wav:
            self.stats["samples"] += samples
            job.deliver(ctypes.string_at(wav, samples * 2))
        return 0


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None or (_engine.started.done() and _engine.started.exception()):
            _engine = _Engine()
        return _engine


def engine_stats() -> dict[str, int]:
    """Counters of the process's engine (for tests and benchmarks)."""
    engine = _engine
    return dict(engine.stats) if engine is not None else {"completed": 0, "aborted": 0,
                                                           "samples": 0}


async def _started_engine() -> tuple[_Engine, int]:
    engine = _get_engine()
    # shielded: one cancelled opener must not cancel the start-up every stream shares
    rate = await asyncio.shield(asyncio.wrap_future(engine.started))
    return engine, rate


# --------------------------------------------------------------------------- provider


class EspeakTtsStream:
    """One call's synthesis session; every stream shares the process's engine thread."""

    def __init__(self, engine: _Engine, rate: int, voice: str, params: Mapping[str, int]) -> None:
        self.output_format = AudioFormat("pcm16", rate)
        self.voice = voice
        self._engine = engine
        self._params = dict(params)
        self._closed = False

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        return self._synthesize(text)

    async def _synthesize(self, text: str) -> AsyncIterator[bytes]:
        if self._closed:
            raise ProviderError(f"{NAME}: stream is closed", provider=NAME, retryable=False)
        if not text.strip():
            return
        job = _Job(text, self.voice, self._params, asyncio.get_running_loop())
        self._engine.submit(job)
        try:
            while True:
                item = await job.out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            job.cancelled = True  # consumer stopped early (cancel/aclose): abort the job

    async def aclose(self) -> None:
        self._closed = True


class EspeakTts:
    """The ``espeak`` TTS provider (espeak-ng from the ``espeakng-loader`` wheel)."""

    name = NAME

    def __init__(self, *, voice: str | None = None, language: str | None = None,
                 options: Mapping[str, Any] | None = None, model: str | None = None) -> None:
        if model is not None:
            raise ConfigError(f"{NAME} has no models (got {model!r}); choose a voice instead")
        self._voice = voice
        self._language = language
        self._params = parse_options(options or {})

    def output_formats(self) -> Sequence[AudioFormat]:
        return (AudioFormat("pcm16", NATIVE_RATE),)

    async def open(self, fmt: AudioFormat, *, voice: str | None, language: str) -> EspeakTtsStream:
        """Always produces pcm16 at the library's rate; the pipeline converts."""
        engine, rate = await _started_engine()
        name = voice or self._voice or default_voice(language or self._language)
        ok = await asyncio.wrap_future(engine.call(lambda: engine.set_voice(name, self._params)))
        if not ok:
            raise ConfigError(f"{NAME}: no voice {name!r} (see the catalogue for voice names)")
        return EspeakTtsStream(engine, rate, name, self._params)

    async def warm(self) -> int:
        """Load the library now; returns its sample rate."""
        _, rate = await _started_engine()
        return rate
