"""What each cloud engine offers: models, voices, languages, formats, required keys.

Static facts taken from the vendors' documentation (see docs/providers.md), used by the
registry's ``describe()`` (and so by ``GET /v1/agents/llm-options`` and
``GET /v1/languages``) without importing any SDK or touching the network. The live
ElevenLabs voice list of an account comes from :func:`providers.cloud.elevenlabs_tts.list_voices`.
"""

from __future__ import annotations

from typing import Any

# Deepgram Nova-3 (monolingual and ``multi``), per Deepgram's models & languages overview.
DEEPGRAM_NOVA3_LANGUAGES = (
    "multi", "af", "ar", "be", "bg", "bn", "bs", "ca", "cs", "da", "da-DK", "de", "de-CH",
    "el", "en", "en-AU", "en-CA", "en-GB", "en-IN", "en-NZ", "en-US", "es", "es-419", "et",
    "fa", "fi", "fr", "fr-CA", "gl", "gu", "he", "hi", "hr", "hu", "id", "it", "ja", "kn",
    "ko", "ko-KR", "lt", "lv", "mk", "mr", "ms", "nl", "nl-BE", "no", "pl", "pt", "pt-BR",
    "pt-PT", "ro", "ru", "sk", "sl", "sr", "sv", "sv-SE", "ta", "te", "th", "tl", "tr", "uk",
    "vi", "xh", "zh", "zh-CN", "zh-HK", "zh-Hans", "zh-Hant", "zh-TW", "zu",
)  # fmt: skip
DEEPGRAM_STT_MODELS = ("nova-3", "nova-3-medical", "nova-2", "nova-2-phonecall", "nova-2-meeting")
DEEPGRAM_AURA_VOICES = (
    "aura-2-thalia-en", "aura-2-andromeda-en", "aura-2-apollo-en", "aura-2-arcas-en",
    "aura-2-asteria-en", "aura-2-athena-en", "aura-2-helena-en", "aura-2-hera-en",
    "aura-2-luna-en", "aura-2-orion-en", "aura-2-orpheus-en", "aura-2-zeus-en",
    "aura-2-celeste-es", "aura-2-nestor-es", "aura-asteria-en", "aura-luna-en",
)  # fmt: skip

# ElevenLabs Flash/Turbo v2.5 languages (ISO 639-1; "fil" for Filipino).
ELEVENLABS_LANGUAGES = (
    "ar", "bg", "cs", "da", "de", "el", "en", "es", "fi", "fil", "fr", "hi", "hr", "hu",
    "id", "it", "ja", "ko", "ms", "nl", "no", "pl", "pt", "ro", "ru", "sk", "sv", "ta",
    "tr", "uk", "vi", "zh",
)  # fmt: skip
ELEVENLABS_MODELS = (
    "eleven_flash_v2_5", "eleven_turbo_v2_5", "eleven_multilingual_v2", "eleven_flash_v2",
)  # fmt: skip
ELEVENLABS_PREMADE_VOICES = (
    {"id": "21m00Tcm4TlvDq8ikWAM", "name": "Rachel"},
    {"id": "JBFqnCBsd6RMkjVDRZzb", "name": "George"},
    {"id": "EXAVITQu4vr4xnSDxMaL", "name": "Sarah"},
    {"id": "TX3LPaxmHKxFdv7VOQHJ", "name": "Liam"},
)

OPENAI_LLM_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "gpt-4.1-nano")
OPENAI_TTS_MODELS = ("gpt-4o-mini-tts", "tts-1", "tts-1-hd")
OPENAI_TTS_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
)  # fmt: skip
# OpenAI's speech models follow Whisper's language coverage; the common ones:
OPENAI_TTS_LANGUAGES = (
    "ar", "cs", "da", "de", "el", "en", "es", "fi", "fr", "he", "hi", "hu", "id", "it", "ja",
    "ko", "ms", "nl", "no", "pl", "pt", "ro", "ru", "sk", "sv", "th", "tr", "uk", "vi", "zh",
)  # fmt: skip


def _fmt(encoding: str, rate: int) -> str:
    return f"{encoding}@{rate}"


DESCRIPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("stt", "deepgram"): {
        "label": "Deepgram (streaming, Nova)",
        "models": list(DEEPGRAM_STT_MODELS),
        "default_model": "nova-3",
        "languages": list(DEEPGRAM_NOVA3_LANGUAGES),
        "formats": [_fmt("pcm16", 16000), _fmt("mulaw", 8000), "pcm16@any", _fmt("alaw", 8000)],
        "credentials": ["DEEPGRAM_API_KEY"],
        "cloud": True,
    },
    ("llm", "openai"): {
        "label": "OpenAI-compatible chat completions (OpenAI, Ollama, vLLM, ...)",
        "models": list(OPENAI_LLM_MODELS),
        "default_model": "gpt-4o-mini",
        "languages": [],  # any: the prompt decides
        "tools": True,
        "credentials": ["OPENAI_API_KEY"],
        "options": ["base_url", "temperature", "max_tokens", "stream_usage"],
        "cloud": True,
    },
    ("tts", "elevenlabs"): {
        "label": "ElevenLabs (WebSocket stream-input)",
        "models": list(ELEVENLABS_MODELS),
        "default_model": "eleven_flash_v2_5",
        "voices": [dict(v) for v in ELEVENLABS_PREMADE_VOICES],
        "voice_catalog": "/v1/voice-providers/elevenlabs/voices",
        "languages": list(ELEVENLABS_LANGUAGES),
        "formats": ["pcm16@16000", "mulaw@8000", "pcm16@24000", "pcm16@22050", "pcm16@44100"],
        "credentials": ["ELEVENLABS_API_KEY"],
        "cloud": True,
    },
    ("tts", "openai"): {
        "label": "OpenAI text-to-speech",
        "models": list(OPENAI_TTS_MODELS),
        "default_model": "tts-1",
        "voices": [{"id": v, "name": v} for v in OPENAI_TTS_VOICES],
        "languages": list(OPENAI_TTS_LANGUAGES),
        "formats": ["pcm16@24000"],
        "credentials": ["OPENAI_API_KEY"],
        "cloud": True,
    },
    ("tts", "deepgram"): {
        "label": "Deepgram Aura (WebSocket)",
        "models": [],
        "voices": [{"id": v, "name": v} for v in DEEPGRAM_AURA_VOICES],
        "default_voice": "aura-2-thalia-en",
        "languages": ["en", "es"],
        "formats": ["pcm16@24000", "mulaw@8000", "pcm16@16000", "pcm16@8000", "pcm16@48000"],
        "credentials": ["DEEPGRAM_API_KEY"],
        "cloud": True,
    },
}
