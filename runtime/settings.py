"""Worker settings: environment variables (``RYMI_*``), validated once at start-up.

Every field is documented in docs/configuration.md. Secrets are ``SecretStr`` so they never
show in ``repr``, logs or validation errors; read them with ``.get_secret_value()`` at the
single place they are sent.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error", "critical"]

#: Secret keys start with this; publishable keys (``sb_publishable_``, ``rymi_pk_``) are
#: for browsers and cannot report calls.
SECRET_KEY_PREFIX = "rymi_"
_PUBLISHABLE_PREFIXES = ("rymi_pk_", "sb_publishable_")


def default_worker_id() -> str:
    """``<hostname>-<pid>``: unique per process on a host, readable in call records."""
    return f"{socket.gethostname()}-{os.getpid()}"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (IPv4 127/8, IPv6 ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env(*names: str) -> Any:
    """A field read from ``RYMI_<NAME>`` or the vendor's usual variable (first set wins)."""
    return Field(default=None, validation_alias=AliasChoices(*names))


_secret = _env  # the name some field definitions use


class WorkerSettings(BaseSettings):
    """One worker process's configuration. ``RYMI_<FIELD>`` sets each field."""

    model_config = SettingsConfigDict(
        env_prefix="RYMI_",
        extra="ignore",  # other RYMI_* variables (e.g. of tests or tools) are not errors
        populate_by_name=True,
        validate_default=True,
        hide_input_in_errors=True,  # a rejected secret is never echoed
    )

    host: str = Field(default="127.0.0.1", min_length=1, description="address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port; 0 picks a free one")
    api_url: AnyHttpUrl | None = Field(
        default=None,
        description="the Rymi /v1 API; None serves the embedded local API in this process",
    )
    api_key: SecretStr | None = Field(default=None, description="secret key rymi_...")
    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".rymi",
        description="SQLite files (outbox, embedded API) and the dev key",
    )
    max_calls: int = Field(default=100, ge=1, le=10_000, description="concurrent call limit")
    offline_stt_decoders: int = Field(
        default=2,
        ge=0,
        le=64,
        description=(
            "pocketsphinx decoders loaded at start (callers expected to talk at once); "
            "0 loads them on first use"
        ),
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, le=24 * 3600, description="on SIGTERM, how long active calls get"
    )
    log_level: LogLevel = "info"
    stall_trace_ms: float | None = Field(
        default=None,
        ge=1,
        le=60_000,
        description="log the event loop's stack whenever it stalls longer than this (ms)",
    )
    worker_id: str = Field(
        default_factory=default_worker_id,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:@-]+$",
    )
    insecure_dev: bool = Field(
        default=False,
        description="development only: allow plain-http RYMI_API_URL to a non-loopback host "
        "and unsigned carrier requests",
    )
    public_url: str | None = Field(
        default=None, description="how carriers reach this worker, e.g. https://voice.example.com"
    )

    # Carrier media streams (runtime/transports/carriers.py, docs/carriers.md): the secrets
    # that check carrier signatures. Unset means that carrier's requests are refused (503)
    # unless insecure_dev is on.
    twilio_auth_token: SecretStr | None = _env("RYMI_TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN")
    plivo_auth_token: SecretStr | None = _env("RYMI_PLIVO_AUTH_TOKEN", "PLIVO_AUTH_TOKEN")
    vonage_signature_secret: SecretStr | None = _env(
        "RYMI_VONAGE_SIGNATURE_SECRET", "VONAGE_SIGNATURE_SECRET"
    )
    vonage_api_key: str | None = Field(
        default=None, description="if set, a Vonage JWT must carry this api_key claim"
    )
    telnyx_public_key: str | None = Field(
        default=None, description="base64 Ed25519 key that signs Telnyx webhooks"
    )
    carrier_stream_secret: SecretStr | None = Field(
        default=None,
        description="keys stream tickets; default derived from the API key (same on every worker)",
    )

    # Engine credentials, handed to providers/registry.py by provider_credentials().
    # Each also reads the vendor's usual variable (DEEPGRAM_API_KEY...).
    deepgram_api_key: SecretStr | None = _env("RYMI_DEEPGRAM_API_KEY", "DEEPGRAM_API_KEY")
    openai_api_key: SecretStr | None = _env("RYMI_OPENAI_API_KEY", "OPENAI_API_KEY")
    elevenlabs_api_key: SecretStr | None = _env("RYMI_ELEVENLABS_API_KEY", "ELEVENLABS_API_KEY")
    deepgram_base_url: AnyHttpUrl | None = _env("RYMI_DEEPGRAM_BASE_URL", "DEEPGRAM_BASE_URL")
    openai_base_url: AnyHttpUrl | None = _env("RYMI_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    elevenlabs_base_url: AnyHttpUrl | None = _env(
        "RYMI_ELEVENLABS_BASE_URL", "ELEVENLABS_BASE_URL"
    )

    # LiveKit (`rymi-worker livekit`, realtime tokens).
    livekit_url: str | None = _env("RYMI_LIVEKIT_URL", "LIVEKIT_URL")
    livekit_api_key: SecretStr | None = _env("RYMI_LIVEKIT_API_KEY", "LIVEKIT_API_KEY")
    livekit_api_secret: SecretStr | None = _env("RYMI_LIVEKIT_API_SECRET", "LIVEKIT_API_SECRET")
    livekit_agent_name: str | None = Field(default=None, max_length=128)
    livekit_default_agent_id: str | None = Field(default=None, max_length=64)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand_dir(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("api_key", mode="after")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if not key:
            return None
        if key.startswith(_PUBLISHABLE_PREFIXES):
            raise ValueError("a publishable key cannot report calls; use a secret key (rymi_...)")
        if not key.startswith(SECRET_KEY_PREFIX) or len(key) < len(SECRET_KEY_PREFIX) + 8:
            raise ValueError("must be a secret key starting with 'rymi_'")
        if any(c.isspace() for c in key):
            raise ValueError("must not contain whitespace")
        return SecretStr(key)

    @field_validator("public_url", "livekit_url", mode="after")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise ValueError("must be an absolute http(s) or ws(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        if self.api_url is not None:
            if self.api_key is None:
                raise ValueError(
                    "RYMI_API_KEY (a secret key rymi_...) is required with RYMI_API_URL"
                )
            plain = self.api_url.scheme == "http"
            if plain and not is_loopback_host(self.api_url.host or "") and not self.insecure_dev:
                raise ValueError(
                    "RYMI_API_URL uses plain http to a non-loopback host, which would send the "
                    "secret key in clear; use https (or RYMI_INSECURE_DEV=true for a lab set-up)"
                )
        return self

    @property
    def embedded_api(self) -> bool:
        """No API configured: this process serves the local ``/v1`` API itself."""
        return self.api_url is None

    def provider_credentials(self) -> dict[str, str]:
        """Operator credentials for the engines, by the names providers/registry.py reads
        (``DEEPGRAM_API_KEY``, ``OPENAI_BASE_URL``…); unset ones are left out."""
        out: dict[str, str] = {}
        for vendor in ("deepgram", "openai", "elevenlabs"):
            key: SecretStr | None = getattr(self, f"{vendor}_api_key")
            url: AnyHttpUrl | None = getattr(self, f"{vendor}_base_url")
            if key is not None and key.get_secret_value():
                out[f"{vendor.upper()}_API_KEY"] = key.get_secret_value()
            if url is not None:
                out[f"{vendor.upper()}_BASE_URL"] = str(url).rstrip("/")
        return out
