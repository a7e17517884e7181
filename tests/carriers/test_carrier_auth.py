"""Carrier request authentication with the carriers' own signing schemes and libraries."""

from __future__ import annotations

import base64
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from runtime.carriers import auth
from runtime.carriers.auth import AuthError, ReplayCache, StreamTickets

TOKEN = "twilio-auth-token-0123456789abcdef"
SECRET = "vonage-signature-secret-0123456789abcdef"
URL = "https://voice.example.com/v1/carriers/twilio/answer?agent_id=ag_1"
PARAMS = {"CallSid": "CA1", "From": "+15550100", "To": "+15550101"}


def status(exc: pytest.ExceptionInfo[AuthError]) -> int:
    return exc.value.status


def test_twilio_signature_from_the_twilio_library() -> None:
    signature = auth.sign_twilio(TOKEN, URL, PARAMS)
    auth.verify_twilio(TOKEN, URL, PARAMS, signature)
    # the stream upgrade: the wss URL, no parameters
    ws = "wss://voice.example.com/v1/carriers/twilio/stream"
    auth.verify_twilio(TOKEN, ws, {}, auth.sign_twilio(TOKEN, ws, {}))
    with pytest.raises(AuthError) as exc:
        auth.verify_twilio(TOKEN, URL, {**PARAMS, "From": "+1999"}, signature)
    assert status(exc) == 403
    with pytest.raises(AuthError) as exc:
        auth.verify_twilio(TOKEN, URL, PARAMS, None)
    assert status(exc) == 401
    with pytest.raises(AuthError) as exc:
        auth.verify_twilio("", URL, PARAMS, signature)
    assert status(exc) == 503


def test_plivo_v3_signature_and_replayed_nonce() -> None:
    url = "https://voice.example.com/v1/carriers/plivo/answer?agent_id=ag_1"
    replay = ReplayCache(ttl=600)
    signature = auth.sign_plivo(TOKEN, "POST", url, PARAMS, "nonce-1")
    auth.verify_plivo(TOKEN, "POST", url, PARAMS, signature, "nonce-1", replay=replay, now=0)
    with pytest.raises(AuthError) as exc:  # the same request again
        auth.verify_plivo(TOKEN, "POST", url, PARAMS, signature, "nonce-1", replay=replay, now=1)
    assert status(exc) == 403 and "replayed" in exc.value.message
    with pytest.raises(AuthError) as exc:
        auth.verify_plivo(TOKEN, "POST", url, {**PARAMS, "To": "+1"}, signature, "nonce-2",
                          replay=replay, now=2)
    assert status(exc) == 403
    with pytest.raises(AuthError) as exc:
        auth.verify_plivo(TOKEN, "POST", url, PARAMS, None, None, replay=replay, now=2)
    assert status(exc) == 401
    # a nonce is forgotten after the window
    assert replay.first_use("plivo:nonce-1", 10_000)


def test_vonage_signed_jwt_fresh_and_bound_to_the_body() -> None:
    now = time.time()
    body = b'{"uuid":"u1"}'
    token = auth.sign_vonage(SECRET, body, now=now, api_key="key1")
    claims = auth.verify_vonage(SECRET, token, body, now=now, max_age_s=300, api_key="key1")
    assert claims["api_key"] == "key1"
    cases = {
        "tampered body": dict(token=token, body=b'{"uuid":"u2"}', now=now),
        "stale": dict(token=token, body=body, now=now + 3600),
        "wrong key": dict(token=auth.sign_vonage("x" * 40, body, now=now, api_key="key1"),
                          body=body, now=now),
        "garbage": dict(token="not.a.jwt", body=body, now=now),
    }
    for name, case in cases.items():
        with pytest.raises(AuthError) as exc:
            auth.verify_vonage(SECRET, case["token"], case["body"], now=case["now"],
                               max_age_s=300, api_key="key1")
        assert status(exc) == 403, name
    with pytest.raises(AuthError) as exc:
        auth.verify_vonage(SECRET, None, body, now=now, max_age_s=300)
    assert status(exc) == 401
    assert auth.bearer("Bearer abc") == "abc" and auth.bearer("Basic abc") is None


def test_telnyx_ed25519_signature_and_timestamp() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    public = base64.b64encode(raw).decode()
    body = b"CallSid=v3%3Aabc&From=%2B1"
    ts = "1700000000"
    signature = base64.b64encode(key.sign(ts.encode() + b"|" + body)).decode()
    auth.verify_telnyx(public, signature, ts, body, now=1700000010, max_age_s=300)
    for sig, stamp, data, now in ((signature, ts, body + b"x", 1700000010),
                                  (signature, ts, body, 1700009999),
                                  ("AAAA", ts, body, 1700000010)):
        with pytest.raises(AuthError) as exc:
            auth.verify_telnyx(public, sig, stamp, data, now=now, max_age_s=300)
        assert status(exc) == 403
    with pytest.raises(AuthError) as exc:
        auth.verify_telnyx(public, None, ts, body, now=1700000010, max_age_s=300)
    assert status(exc) == 401


def test_stream_tickets_are_bound_short_lived_and_single_use() -> None:
    tickets = StreamTickets("s" * 64, ttl_s=60, replay=ReplayCache())
    ticket = tickets.issue("plivo", {"agent_id": "ag_1", "call_id": None}, now=1000)
    claims = tickets.redeem("plivo", ticket, now=1010)
    assert claims["agent_id"] == "ag_1" and "call_id" not in claims
    with pytest.raises(AuthError) as exc:
        tickets.redeem("plivo", ticket, now=1011)
    assert status(exc) == 403 and "already used" in exc.value.message
    other = tickets.issue("plivo", {"agent_id": "ag_1"}, now=1000)
    with pytest.raises(AuthError) as exc:
        tickets.redeem("vonage", other, now=1001)  # minted for another carrier
    assert status(exc) == 403
    with pytest.raises(AuthError) as exc:
        tickets.redeem("plivo", other, now=2000)
    assert status(exc) == 403 and "stale" in exc.value.message
    with pytest.raises(AuthError) as exc:
        tickets.redeem("plivo", None, now=1001)
    assert status(exc) == 401
    forged = StreamTickets("f" * 64, ttl_s=60, replay=ReplayCache()).issue(
        "plivo", {"agent_id": "ag_1"}, now=1000)
    with pytest.raises(AuthError):
        tickets.redeem("plivo", forged, now=1001)
    assert auth.derive_stream_secret("rymi_a") == auth.derive_stream_secret("rymi_a")
    assert auth.derive_stream_secret("rymi_a") != auth.derive_stream_secret("rymi_b")
