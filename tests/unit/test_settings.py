"""WorkerSettings: defaults, the RYMI_ environment, validation, and secrets kept out of sight."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime.settings import WorkerSettings, is_loopback_host

_VENDOR_VARS = (
    "DEEPGRAM_API_KEY", "OPENAI_API_KEY", "ELEVENLABS_API_KEY", "DEEPGRAM_BASE_URL",
    "OPENAI_BASE_URL", "ELEVENLABS_BASE_URL", "LIVEKIT_URL", "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET", "TWILIO_AUTH_TOKEN", "PLIVO_AUTH_TOKEN", "VONAGE_SIGNATURE_SECRET",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("RYMI_") or name.upper() in _VENDOR_VARS:
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = WorkerSettings()
    assert (s.host, s.port, s.max_calls, s.drain_timeout_s) == ("127.0.0.1", 8080, 100, 30)
    assert s.api_url is None and s.api_key is None and s.embedded_api
    assert s.data_dir == Path.home() / ".rymi"
    assert s.log_level == "info" and s.insecure_dev is False and s.public_url is None
    assert s.worker_id == f"{socket.gethostname()}-{os.getpid()}"
    assert s.provider_credentials() == {}


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RYMI_HOST", "0.0.0.0")
    monkeypatch.setenv("RYMI_PORT", "9001")
    monkeypatch.setenv("RYMI_API_URL", "https://api.rymi.live")
    monkeypatch.setenv("RYMI_API_KEY", "rymi_live_0123456789abcdef")
    monkeypatch.setenv("RYMI_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("RYMI_MAX_CALLS", "7")
    monkeypatch.setenv("RYMI_DRAIN_TIMEOUT_S", "2.5")
    monkeypatch.setenv("RYMI_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("RYMI_WORKER_ID", "w-1")
    monkeypatch.setenv("RYMI_PUBLIC_URL", "https://voice.example.com/")
    s = WorkerSettings()
    assert (s.host, s.port, s.max_calls, s.drain_timeout_s) == ("0.0.0.0", 9001, 7, 2.5)
    assert str(s.api_url).rstrip("/") == "https://api.rymi.live" and not s.embedded_api
    assert s.api_key is not None and s.api_key.get_secret_value() == "rymi_live_0123456789abcdef"
    assert s.data_dir == tmp_path / "d"
    assert s.log_level == "debug" and s.worker_id == "w-1"
    assert s.public_url == "https://voice.example.com"


def test_keyword_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RYMI_PORT", "9001")
    assert WorkerSettings(port=0).port == 0


def test_data_dir_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert WorkerSettings(data_dir=Path("~/voice")).data_dir == tmp_path / "voice"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"max_calls": 0}, "max_calls"),
        ({"drain_timeout_s": -1}, "drain_timeout_s"),
        ({"log_level": "verbose"}, "log_level"),
        ({"worker_id": "has space"}, "worker_id"),
        ({"api_url": "ftp://example.com", "api_key": "rymi_0123456789"}, "api_url"),
        ({"api_key": "sk_0123456789abc"}, "api_key"),
        ({"api_key": "rymi_pk_0123456789"}, "api_key"),
        ({"public_url": "voice.example.com"}, "public_url"),
    ],
)
def test_invalid_values_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        WorkerSettings(**overrides)  # type: ignore[arg-type]
    assert field in {str(e["loc"][0]) for e in info.value.errors() if e["loc"]}


def test_publishable_key_is_refused_with_a_reason() -> None:
    with pytest.raises(ValidationError, match="publishable key"):
        WorkerSettings(api_key="sb_publishable_0123456789")  # type: ignore[arg-type]


def test_api_url_requires_a_key() -> None:
    with pytest.raises(ValidationError, match="RYMI_API_KEY"):
        WorkerSettings(api_url="https://api.rymi.live")  # type: ignore[arg-type]


def test_plain_http_to_a_remote_api_needs_insecure_dev() -> None:
    remote = {"api_url": "http://api.example.com", "api_key": "rymi_0123456789abcdef"}
    with pytest.raises(ValidationError, match="plain http"):
        WorkerSettings(**remote)  # type: ignore[arg-type]
    assert WorkerSettings(**remote, insecure_dev=True).api_url is not None  # type: ignore[arg-type]
    local = {"api_url": "http://127.0.0.1:9000", "api_key": "rymi_0123456789abcdef"}
    assert WorkerSettings(**local).api_url is not None  # type: ignore[arg-type]


def test_secrets_stay_out_of_repr_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "rymi_topsecret_0123456789"
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-secret-value")
    s = WorkerSettings(api_url="https://api.rymi.live", api_key=secret)  # type: ignore[arg-type]
    for text in (repr(s), str(s), str(s.model_dump())):
        assert secret not in text and "dg-secret-value" not in text
    # a rejected key is not echoed back in the error either
    with pytest.raises(ValidationError) as info:
        WorkerSettings(api_key="not-a-rymi-key-but-secret")  # type: ignore[arg-type]
    assert "not-a-rymi-key-but-secret" not in str(info.value)


def test_provider_credentials_use_the_registry_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg")
    monkeypatch.setenv("RYMI_OPENAI_API_KEY", "oa")
    monkeypatch.setenv("RYMI_OPENAI_BASE_URL", "http://127.0.0.1:11434/v1/")
    creds = WorkerSettings().provider_credentials()
    assert creds == {
        "DEEPGRAM_API_KEY": "dg",
        "OPENAI_API_KEY": "oa",
        "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
    }


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("10.0.0.1", False), ("example.com", False)],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_vendor_variable_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tw-secret-xyz")
    monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:7880/")
    monkeypatch.setenv("RYMI_LIVEKIT_API_KEY", "lk")
    s = WorkerSettings()
    assert s.twilio_auth_token is not None
    assert s.twilio_auth_token.get_secret_value() == "tw-secret-xyz"
    assert s.livekit_url == "ws://127.0.0.1:7880"
    assert s.livekit_api_key is not None and s.livekit_api_key.get_secret_value() == "lk"
    assert "tw-secret-xyz" not in repr(s)
