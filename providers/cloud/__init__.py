"""Cloud engines (Deepgram, OpenAI-compatible, ElevenLabs) and their registration.

:func:`register_cloud_providers` puts them in :mod:`providers.registry` under the names
agents use (``stt: deepgram``; ``llm: openai``; ``tts: elevenlabs | openai | deepgram``).
Nothing here imports a vendor SDK until a call actually creates the engine.

Credentials come from the worker (operator) as ``DEEPGRAM_API_KEY``, ``OPENAI_API_KEY``,
``ELEVENLABS_API_KEY`` and, optionally, ``*_BASE_URL`` for a proxy, region or
self-hosted endpoint. An agent's ``options.base_url`` pointing anywhere else (a local
Ollama or vLLM) gets no worker key, see :func:`providers.cloud._common.resolve_endpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from providers.base import ConfigError, LlmProvider, SttProvider, TtsProvider
from providers.cloud._common import Endpoint, resolve_endpoint

__all__ = ["register_cloud_providers", "warm_cloud_providers"]

DEEPGRAM_URL = "https://api.deepgram.com"
OPENAI_URL = "https://api.openai.com/v1"
ELEVENLABS_URL = "https://api.elevenlabs.io"
_DEFAULT_URLS = {"DEEPGRAM": DEEPGRAM_URL, "OPENAI": OPENAI_URL, "ELEVENLABS": ELEVENLABS_URL}

_O = TypeVar("_O", bound=BaseModel)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(default=None, max_length=500)
    #: a key for a custom ``base_url`` only (the worker's key is never sent there)
    api_key: str | None = Field(default=None, max_length=500, repr=False)
    name: str | None = Field(default=None, max_length=64)  # label in events/failover


class DeepgramSttOptions(_Options):
    endpointing_ms: int | None = Field(default=300, ge=10, le=10_000)
    utterance_end_ms: int | None = Field(default=1000, ge=1000, le=5000)
    interim_results: bool = True
    vad_events: bool = True
    smart_format: bool = True
    keepalive_s: float = Field(default=4.0, ge=0, le=9)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    gated: bool = True
    extra_query: dict[str, str] = Field(default_factory=dict)


class OpenAiLlmOptions(_Options):
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=32_000)
    stream_usage: bool = True
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_retries: int = Field(default=0, ge=0, le=5)
    extra_body: dict[str, Any] = Field(default_factory=dict)


class ElevenLabsTtsOptions(_Options):
    voice_settings: dict[str, Any] | None = None
    chunk_length_schedule: list[int] | None = Field(default=None, min_length=1, max_length=8)
    language_code: str | None = Field(default=None, max_length=16)
    inactivity_timeout_s: int = Field(default=180, ge=5, le=180)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)


class OpenAiTtsOptions(_Options):
    speed: float | None = Field(default=None, ge=0.25, le=4.0)
    instructions: str | None = Field(default=None, max_length=2000)
    timeout_s: float = Field(default=30.0, gt=0, le=600)


class DeepgramTtsOptions(_Options):
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)


def _options(cls: type[_O], kind: str, name: str, options: Mapping[str, Any]) -> _O:
    try:
        return cls.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{kind} provider {name!r}: invalid options: {problems}") from None


def _credential(credentials: Mapping[str, str], name: str) -> str | None:
    for key in (name, name.lower()):
        value = credentials.get(key)
        if value:
            return str(value)
    return None


def _resolve(
    kind: str, name: str, opts: _Options, credentials: Mapping[str, str], vendor: str
) -> Endpoint:
    """Base URL and key for one engine; the vendor's own endpoint requires the worker key."""
    default_url = _DEFAULT_URLS[vendor]
    endpoint = resolve_endpoint(
        default_url=default_url,
        operator_url=_credential(credentials, f"{vendor}_BASE_URL"),
        agent_url=opts.base_url,
        api_key=_credential(credentials, f"{vendor}_API_KEY"),
        agent_api_key=opts.api_key,
    )
    if not endpoint.custom:
        if opts.api_key:
            raise ConfigError(
                f"{kind} provider {name!r}: options.api_key is only for a custom base_url; "
                f"the worker's {vendor}_API_KEY is used for {endpoint.base_url}"
            )
        if not endpoint.api_key:
            raise ConfigError(
                f"{kind} provider {name!r} needs {vendor}_API_KEY in the worker's environment"
            )
    return endpoint


# --------------------------------------------------------------------------- factories


def make_deepgram_stt(
    *,
    model: str | None,
    language: str | None,
    options: Mapping[str, Any],
    credentials: Mapping[str, str],
) -> SttProvider:
    from providers.cloud.deepgram_stt import DeepgramStt

    opts = _options(DeepgramSttOptions, "stt", "deepgram", options)
    endpoint = _resolve("stt", "deepgram", opts, credentials, "DEEPGRAM")
    key = endpoint.api_key
    return DeepgramStt(
        api_key=key or "",
        base_url=endpoint.base_url,
        model=model,
        language=language,
        endpointing_ms=opts.endpointing_ms,
        utterance_end_ms=opts.utterance_end_ms,
        interim_results=opts.interim_results,
        vad_events=opts.vad_events,
        smart_format=opts.smart_format,
        keepalive_s=opts.keepalive_s,
        connect_timeout_s=opts.connect_timeout_s,
        gated=opts.gated,
        extra_query=opts.extra_query,
        name=opts.name,
    )


def make_openai_llm(
    *,
    model: str | None,
    options: Mapping[str, Any],
    credentials: Mapping[str, str],
    context: Mapping[str, Any],
) -> LlmProvider:
    from providers.cloud.openai_llm import OpenAiLlm

    opts = _options(OpenAiLlmOptions, "llm", "openai", options)
    endpoint = _resolve("llm", "openai", opts, credentials, "OPENAI")
    key = endpoint.api_key
    return OpenAiLlm(
        api_key=key,
        base_url=endpoint.base_url,
        model=model,
        temperature=opts.temperature,
        max_tokens=opts.max_tokens,
        stream_usage=opts.stream_usage,
        timeout_s=opts.timeout_s,
        max_retries=opts.max_retries,
        extra_body=opts.extra_body,
        name=opts.name,
    )


def make_elevenlabs_tts(
    *,
    model: str | None,
    voice: str | None,
    language: str | None,
    options: Mapping[str, Any],
    credentials: Mapping[str, str],
) -> TtsProvider:
    from providers.cloud.elevenlabs_tts import ElevenLabsTts

    opts = _options(ElevenLabsTtsOptions, "tts", "elevenlabs", options)
    endpoint = _resolve("tts", "elevenlabs", opts, credentials, "ELEVENLABS")
    key = endpoint.api_key
    return ElevenLabsTts(
        api_key=key,
        base_url=endpoint.base_url,
        model=model,
        voice=voice,
        voice_settings=opts.voice_settings,
        chunk_length_schedule=opts.chunk_length_schedule,
        language_code=opts.language_code,
        inactivity_timeout_s=opts.inactivity_timeout_s,
        connect_timeout_s=opts.connect_timeout_s,
        name=opts.name,
    )


def make_openai_tts(
    *,
    model: str | None,
    voice: str | None,
    language: str | None,
    options: Mapping[str, Any],
    credentials: Mapping[str, str],
) -> TtsProvider:
    from providers.cloud.openai_tts import OpenAiTts

    opts = _options(OpenAiTtsOptions, "tts", "openai", options)
    endpoint = _resolve("tts", "openai", opts, credentials, "OPENAI")
    key = endpoint.api_key
    return OpenAiTts(
        api_key=key,
        base_url=endpoint.base_url,
        model=model,
        voice=voice,
        speed=opts.speed,
        instructions=opts.instructions,
        timeout_s=opts.timeout_s,
        name=opts.name,
    )


def make_deepgram_tts(
    *,
    model: str | None,
    voice: str | None,
    language: str | None,
    options: Mapping[str, Any],
    credentials: Mapping[str, str],
) -> TtsProvider:
    from providers.cloud.deepgram_tts import DeepgramTts

    opts = _options(DeepgramTtsOptions, "tts", "deepgram", options)
    endpoint = _resolve("tts", "deepgram", opts, credentials, "DEEPGRAM")
    key = endpoint.api_key
    return DeepgramTts(
        api_key=key or "",
        base_url=endpoint.base_url,
        voice=voice or model,  # Aura's "model" is the voice (aura-2-thalia-en)
        connect_timeout_s=opts.connect_timeout_s,
        name=opts.name,
    )


# --------------------------------------------------------------------------- warm-up


def warm_cloud_providers(credentials: Mapping[str, str]) -> list[str]:
    """Import the SDKs of the vendors the operator configured a key for, and build their
    shared clients, so a process's first call does not pay ~0.7 s of imports.

    Call it from a running event loop (the clients are per loop). Returns the vendors
    warmed; a vendor that fails to warm is skipped (its first call will tell why).
    """
    import logging

    from providers.cloud._common import shared_ssl_context

    log = logging.getLogger(__name__)
    warmed = []
    for vendor in ("DEEPGRAM", "OPENAI", "ELEVENLABS"):
        key = _credential(credentials, f"{vendor}_API_KEY")
        if not key:
            continue
        base_url = (_credential(credentials, f"{vendor}_BASE_URL") or _DEFAULT_URLS[vendor]).rstrip(
            "/"
        )
        try:
            if vendor == "DEEPGRAM":
                from providers.cloud import deepgram_stt, deepgram_tts  # noqa: F401

                deepgram_stt.warm(key, base_url)
            elif vendor == "OPENAI":
                from providers.cloud import openai_llm, openai_tts  # noqa: F401

                openai_llm.warm(key, base_url)
            else:
                from providers.cloud import elevenlabs_tts

                elevenlabs_tts.warm(key, base_url)
            if base_url.startswith("https://"):
                shared_ssl_context()
        except Exception as exc:  # best effort: never stop the worker from starting
            log.warning("%s SDK could not be prepared: %s", vendor.lower(), type(exc).__name__)
            continue
        warmed.append(vendor.lower())
    return warmed


# --------------------------------------------------------------------------- registration


def register_cloud_providers() -> None:
    """Register every cloud engine (idempotent; SDKs load when an engine is created)."""
    from providers import registry
    from providers.cloud import catalog as c

    def voice_ids(key: tuple[str, str]) -> list[str]:
        return [v["id"] for v in c.DESCRIPTIONS[key].get("voices", [])]

    registry.register_stt(
        "deepgram",
        make_deepgram_stt,
        replace=True,
        description=c.DESCRIPTIONS[("stt", "deepgram")]["label"],
        models=c.DEEPGRAM_STT_MODELS,
        languages=c.DEEPGRAM_NOVA3_LANGUAGES,
        formats=c.DESCRIPTIONS[("stt", "deepgram")]["formats"],
        credentials=("DEEPGRAM_API_KEY",),
    )
    registry.register_llm(
        "openai",
        make_openai_llm,
        replace=True,
        description=c.DESCRIPTIONS[("llm", "openai")]["label"],
        models=c.OPENAI_LLM_MODELS,
        credentials=("OPENAI_API_KEY",),
    )
    registry.register_tts(
        "elevenlabs",
        make_elevenlabs_tts,
        replace=True,
        description=c.DESCRIPTIONS[("tts", "elevenlabs")]["label"],
        models=c.ELEVENLABS_MODELS,
        voices=voice_ids(("tts", "elevenlabs")),
        languages=c.ELEVENLABS_LANGUAGES,
        formats=c.DESCRIPTIONS[("tts", "elevenlabs")]["formats"],
        credentials=("ELEVENLABS_API_KEY",),
    )
    registry.register_tts(
        "openai",
        make_openai_tts,
        replace=True,
        description=c.DESCRIPTIONS[("tts", "openai")]["label"],
        models=c.OPENAI_TTS_MODELS,
        voices=c.OPENAI_TTS_VOICES,
        languages=c.OPENAI_TTS_LANGUAGES,
        formats=c.DESCRIPTIONS[("tts", "openai")]["formats"],
        credentials=("OPENAI_API_KEY",),
    )
    registry.register_tts(
        "deepgram",
        make_deepgram_tts,
        replace=True,
        description=c.DESCRIPTIONS[("tts", "deepgram")]["label"],
        voices=c.DEEPGRAM_AURA_VOICES,
        languages=("en", "es"),
        formats=c.DESCRIPTIONS[("tts", "deepgram")]["formats"],
        credentials=("DEEPGRAM_API_KEY",),
    )
