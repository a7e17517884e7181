"""Catalogue routes of the local ``/v1`` API, generated from the provider registry.

- ``GET /v1/agents/llm-options``: every engine an agent can name (LLM, and STT/TTS too),
  with models, voices, formats, and whether this worker holds the credentials it needs.
- ``GET /v1/languages``: language codes with the engines that support each
  (``limit``/``offset`` pagination like the other list endpoints).
- ``GET /v1/voice-providers/elevenlabs/voices``: the ElevenLabs account's voices, read
  with the worker's key (the seed's Voice Providers area).

Mounted by ``runtime.server.Worker`` in embedded mode (with a platform API configured,
the platform serves these). Errors use the seed's ``{"error", "code"}`` bodies.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from providers import registry
from providers.base import ProviderError

if TYPE_CHECKING:
    from runtime.server import Worker

#: Names for the language codes the registered engines declare (base codes; regional
#: variants are shown as "<name> (<region>)").
LANGUAGE_NAMES = {
    "af": "Afrikaans", "ar": "Arabic", "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali",
    "bs": "Bosnian", "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian", "fa": "Persian",
    "fi": "Finnish", "fil": "Filipino", "fr": "French", "gl": "Galician", "gu": "Gujarati",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian",
    "it": "Italian", "ja": "Japanese", "kn": "Kannada", "ko": "Korean", "lt": "Lithuanian",
    "lv": "Latvian", "mk": "Macedonian", "mr": "Marathi", "ms": "Malay", "nl": "Dutch",
    "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish", "ta": "Tamil",
    "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian",
    "vi": "Vietnamese", "xh": "Xhosa", "zh": "Chinese", "zu": "Zulu", "multi": "Multilingual",
}  # fmt: skip
MAX_LIMIT = 500


def language_name(code: str) -> str:
    base, _, region = code.partition("-")
    name = LANGUAGE_NAMES.get(base.lower(), code)
    return f"{name} ({region})" if region else name


def llm_options(credentials: Mapping[str, str]) -> dict[str, Any]:
    """The registry's catalogue plus, per engine, whether this worker can run it."""
    out: dict[str, Any] = {}
    for kind, items in registry.describe().items():
        entries = []
        for item in items:
            missing = [c for c in item.get("credentials", []) if not credentials.get(c)]
            entries.append({**item, "available": not missing, "missing_credentials": missing})
        out[kind] = entries
    return out


def language_list() -> list[dict[str, Any]]:
    return [
        {"code": code, "name": language_name(code), **providers}
        for code, providers in registry.languages().items()
    ]


def _error(status: int, message: str, code: str, **headers: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status, headers=headers)


def _page(request: web.Request) -> tuple[int, int] | web.Response:
    try:
        limit = int(request.query.get("limit", str(MAX_LIMIT)))
        offset = int(request.query.get("offset", "0"))
    except ValueError:
        return _error(400, "limit and offset must be integers", "invalid_request")
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        return _error(400, f"limit must be 1..{MAX_LIMIT} and offset >= 0", "invalid_request")
    return limit, offset


def add_catalog_routes(
    target: web.Application | Worker,
    *,
    api_key: Callable[[], str] | None = None,
    credentials: Callable[[], Mapping[str, str]] | None = None,
) -> None:
    """Mount the catalogue on a worker (embedded mode only) or on a bare application."""
    if isinstance(target, web.Application):
        app = target
        get_key = api_key or (lambda: "")
        get_credentials = credentials or (lambda: {})
    else:
        worker = target
        if not worker.embedded_api:
            return
        app = worker.app
        get_key = api_key or (lambda: worker.api_key)
        get_credentials = credentials or worker.settings.provider_credentials

    def authorized(request: web.Request) -> bool:
        expected = get_key()
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return (
            bool(expected)
            and scheme.lower() == "bearer"
            and hmac.compare_digest(token.strip().encode(), expected.encode())
        )

    async def get_llm_options(request: web.Request) -> web.Response:
        if not authorized(request):
            return _error(401, "Missing or invalid API key", "unauthorized")
        return web.json_response(llm_options(get_credentials()))

    async def get_languages(request: web.Request) -> web.Response:
        if not authorized(request):
            return _error(401, "Missing or invalid API key", "unauthorized")
        page = _page(request)
        if isinstance(page, web.Response):
            return page
        limit, offset = page
        languages = language_list()
        return web.json_response(
            {
                "languages": languages[offset : offset + limit],
                "total": len(languages),
                "limit": limit,
                "offset": offset,
            }
        )

    async def get_elevenlabs_voices(request: web.Request) -> web.Response:
        if not authorized(request):
            return _error(401, "Missing or invalid API key", "unauthorized")
        creds = get_credentials()
        key = creds.get("ELEVENLABS_API_KEY")
        if not key:
            return _error(
                400,
                "ElevenLabs is not configured on this worker (ELEVENLABS_API_KEY)",
                "provider_not_configured",
            )
        from providers.cloud.elevenlabs_tts import DEFAULT_BASE_URL, list_voices

        try:
            voices = await list_voices(
                api_key=key, base_url=creds.get("ELEVENLABS_BASE_URL") or DEFAULT_BASE_URL
            )
        except ProviderError as exc:
            if exc.status == 402:
                return _error(402, str(exc), "insufficient_credits")
            if exc.status == 429:
                headers = {}
                if exc.retry_after is not None:
                    headers["Retry-After"] = str(max(1, round(exc.retry_after)))
                return _error(429, str(exc), "rate_limited", **headers)
            return _error(502, str(exc), "upstream_error")
        items = [v.as_dict() for v in voices]
        return web.json_response({"voices": items, "total": len(items)})

    app.router.add_get("/v1/agents/llm-options", get_llm_options)
    app.router.add_get("/v1/languages", get_languages)
    app.router.add_get("/v1/voice-providers/elevenlabs/voices", get_elevenlabs_voices)
