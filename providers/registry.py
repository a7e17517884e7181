"""Provider names → factories, and the catalogue the API shows (llm-options, languages).

An agent names its engines (``"provider": "deepgram"``); the runtime resolves each name
here. Registration is lazy: a factory imports its engine or vendor SDK only when called,
so importing this module stays cheap. The offline engines are registered below; cloud
adapters register themselves the same way::

    register_stt("deepgram", make_deepgram, models=("nova-3",), languages=("en", "de"))

Factories take keyword arguments only and raise :class:`ConfigError` for options they
cannot use:

- STT: ``factory(*, model, language, options, credentials) -> SttProvider``
- LLM: ``factory(*, model, options, credentials, context) -> LlmProvider``
  (``context``: ``prompt``, ``first_message``, ``playbook`` as plain data)
- TTS: ``factory(*, model, voice, language, options, credentials) -> TtsProvider``
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from providers.base import AudioFormat, ConfigError, LlmProvider, SttProvider, TtsProvider

Kind = Literal["stt", "llm", "tts"]
KINDS: tuple[Kind, ...] = ("stt", "llm", "tts")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class SttFactory(Protocol):
    def __call__(
        self,
        *,
        model: str | None,
        language: str | None,
        options: Mapping[str, Any],
        credentials: Mapping[str, str],
    ) -> SttProvider: ...


class LlmFactory(Protocol):
    def __call__(
        self,
        *,
        model: str | None,
        options: Mapping[str, Any],
        credentials: Mapping[str, str],
        context: Mapping[str, Any],
    ) -> LlmProvider: ...


class TtsFactory(Protocol):
    def __call__(
        self,
        *,
        model: str | None,
        voice: str | None,
        language: str | None,
        options: Mapping[str, Any],
        credentials: Mapping[str, str],
    ) -> TtsProvider: ...


@dataclass(frozen=True)
class ProviderInfo:
    """What the catalogue says about one provider.

    ``voices`` and ``languages`` may be callables, computed when the catalogue is read.
    """

    name: str
    kind: Kind
    description: str = ""
    models: tuple[str, ...] = ()
    languages: tuple[str, ...] | Callable[[], Sequence[str]] = field(default=(), compare=False)
    formats: tuple[str, ...] = ()
    offline: bool = False
    #: credential names the factory reads (e.g. ``DEEPGRAM_API_KEY``), for error messages
    credentials: tuple[str, ...] = ()
    voices: tuple[str, ...] | Callable[[], Sequence[str]] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, Any]:
        voices = self.voices() if callable(self.voices) else self.voices
        languages = self.languages() if callable(self.languages) else self.languages
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "models": list(self.models),
            "voices": list(voices),
            "languages": list(languages),
            "formats": list(self.formats),
            "offline": self.offline,
            "credentials": list(self.credentials),
        }


@dataclass(frozen=True)
class _Entry:
    info: ProviderInfo
    factory: Callable[..., Any]


_lock = threading.Lock()
_entries: dict[Kind, dict[str, _Entry]] = {kind: {} for kind in KINDS}


def _register(info: ProviderInfo, factory: Callable[..., Any], *, replace: bool) -> None:
    if not info.name:
        raise ValueError("a provider needs a name")
    with _lock:
        if info.name in _entries[info.kind] and not replace:
            raise ValueError(f"{info.kind} provider {info.name!r} is already registered")
        _entries[info.kind][info.name] = _Entry(info, factory)


def _info(
    kind: Kind,
    name: str,
    *,
    description: str = "",
    models: Sequence[str] = (),
    voices: Sequence[str] | Callable[[], Sequence[str]] = (),
    languages: Sequence[str] | Callable[[], Sequence[str]] = (),
    formats: Sequence[AudioFormat | str] = (),
    offline: bool = False,
    credentials: Sequence[str] = (),
) -> ProviderInfo:
    return ProviderInfo(
        name=name.strip().lower(),
        kind=kind,
        description=description,
        models=tuple(models),
        voices=voices if callable(voices) else tuple(voices),
        languages=languages if callable(languages) else tuple(languages),
        formats=tuple(str(f) for f in formats),
        offline=offline,
        credentials=tuple(credentials),
    )


def register_stt(
    name: str,
    factory: SttFactory,
    *,
    replace: bool = False,
    description: str = "",
    models: Sequence[str] = (),
    languages: Sequence[str] | Callable[[], Sequence[str]] = (),
    formats: Sequence[AudioFormat | str] = (),
    offline: bool = False,
    credentials: Sequence[str] = (),
) -> None:
    info = _info("stt", name, description=description, models=models, languages=languages,
                 formats=formats, offline=offline, credentials=credentials)
    _register(info, factory, replace=replace)


def register_llm(
    name: str,
    factory: LlmFactory,
    *,
    replace: bool = False,
    description: str = "",
    models: Sequence[str] = (),
    languages: Sequence[str] | Callable[[], Sequence[str]] = (),
    offline: bool = False,
    credentials: Sequence[str] = (),
) -> None:
    info = _info("llm", name, description=description, models=models, languages=languages,
                 offline=offline, credentials=credentials)
    _register(info, factory, replace=replace)


def register_tts(
    name: str,
    factory: TtsFactory,
    *,
    replace: bool = False,
    description: str = "",
    models: Sequence[str] = (),
    voices: Sequence[str] | Callable[[], Sequence[str]] = (),
    languages: Sequence[str] | Callable[[], Sequence[str]] = (),
    formats: Sequence[AudioFormat | str] = (),
    offline: bool = False,
    credentials: Sequence[str] = (),
) -> None:
    info = _info("tts", name, description=description, models=models, voices=voices,
                 languages=languages, formats=formats, offline=offline,
                 credentials=credentials)
    _register(info, factory, replace=replace)


def unregister(kind: Kind, name: str) -> None:
    """Remove a provider (tests that register their own put things back this way)."""
    with _lock:
        _entries[kind].pop(name.strip().lower(), None)


def names(kind: Kind) -> list[str]:
    with _lock:
        return sorted(_entries[kind])


def _entry(kind: Kind, name: str) -> _Entry:
    with _lock:
        entry = _entries[kind].get(name.strip().lower())
        known = sorted(_entries[kind])
    if entry is None:
        raise ConfigError(
            f"unknown {kind} provider {name!r}; known: {', '.join(known) or 'none'}"
        )
    return entry


def _check_options(kind: Kind, name: str, options: Any) -> Mapping[str, Any]:
    if not isinstance(options, Mapping):
        raise ConfigError(f"{kind} provider {name!r}: options must be an object")
    return options


def create_stt(
    name: str,
    *,
    model: str | None = None,
    language: str | None = None,
    options: Mapping[str, Any] = _EMPTY,
    credentials: Mapping[str, str] = _EMPTY,
) -> SttProvider:
    entry = _entry("stt", name)
    provider: SttProvider = entry.factory(
        model=model,
        language=language,
        options=_check_options("stt", name, options),
        credentials=credentials,
    )
    return provider


def create_llm(
    name: str,
    *,
    model: str | None = None,
    options: Mapping[str, Any] = _EMPTY,
    credentials: Mapping[str, str] = _EMPTY,
    context: Mapping[str, Any] = _EMPTY,
) -> LlmProvider:
    entry = _entry("llm", name)
    provider: LlmProvider = entry.factory(
        model=model,
        options=_check_options("llm", name, options),
        credentials=credentials,
        context=context,
    )
    return provider


def create_tts(
    name: str,
    *,
    model: str | None = None,
    voice: str | None = None,
    language: str | None = None,
    options: Mapping[str, Any] = _EMPTY,
    credentials: Mapping[str, str] = _EMPTY,
) -> TtsProvider:
    entry = _entry("tts", name)
    provider: TtsProvider = entry.factory(
        model=model,
        voice=voice,
        language=language,
        options=_check_options("tts", name, options),
        credentials=credentials,
    )
    return provider


def describe() -> dict[str, list[dict[str, Any]]]:
    """The catalogue: ``{"stt": [...], "llm": [...], "tts": [...]}``, each sorted by name."""
    with _lock:
        entries = {kind: sorted(_entries[kind].values(), key=lambda e: e.info.name)
                   for kind in KINDS}
    return {kind: [e.info.as_dict() for e in items] for kind, items in entries.items()}


def languages() -> dict[str, dict[str, list[str]]]:
    """For each language code, which providers of each kind support it (``/v1/languages``).

    A provider that lists no languages is left out (it accepts whatever its vendor does).
    """
    out: dict[str, dict[str, list[str]]] = {}
    for kind, items in describe().items():
        for item in items:
            for code in item["languages"]:
                out.setdefault(code, {k: [] for k in KINDS})[kind].append(item["name"])
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- offline engines


def _pocketsphinx(
    *,
    model: str | None,
    language: str | None,
    options: Mapping[str, Any],
    credentials: Mapping[str, str],
) -> SttProvider:
    from providers.offline.pocketsphinx_stt import PocketsphinxStt

    return PocketsphinxStt(model=model, language=language, options=options)


def _playbook(
    *,
    model: str | None,
    options: Mapping[str, Any],
    credentials: Mapping[str, str],
    context: Mapping[str, Any],
) -> LlmProvider:
    from providers.offline.playbook_llm import PlaybookLlm

    return PlaybookLlm.from_options(context, options, model)


def _espeak(
    *,
    model: str | None,
    voice: str | None,
    language: str | None,
    options: Mapping[str, Any],
    credentials: Mapping[str, str],
) -> TtsProvider:
    from providers.offline.espeak_tts import EspeakTts

    return EspeakTts(model=model, voice=voice, language=language, options=options)


def _espeak_voices() -> Sequence[str]:
    from providers.offline.espeak_tts import list_voices

    return list_voices()


def _espeak_languages() -> Sequence[str]:
    """espeak's voices are named by language code; ``en`` is spoken as ``en-us``."""
    return sorted({"en", *_espeak_voices()})


register_stt(
    "pocketsphinx", _pocketsphinx, offline=True, models=("en-us",), languages=("en", "en-us"),
    formats=("pcm16@16000",),
    description="CMU PocketSphinx; the en-US model ships inside the wheel",
)
register_llm(
    "playbook", _playbook, offline=True, languages=(),
    description="Deterministic responder that answers from the agent's playbook intents",
)
register_tts(
    "espeak", _espeak, offline=True, voices=_espeak_voices, languages=_espeak_languages,
    formats=("pcm16@22050",),
    description="espeak-ng in-process (library and voices from the espeakng-loader wheel)",
)

# --------------------------------------------------------------------------- cloud engines

from providers.cloud import register_cloud_providers  # noqa: E402  (SDKs load lazily)

register_cloud_providers()
